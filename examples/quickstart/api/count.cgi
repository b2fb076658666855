#!/bin/sh
# Counts a visit in the store (by its service name) and says which replica answered.
echo "Content-Type: text/plain"
echo
echo "visit number $(echo incr | nc -w 2 store 7000), counted by $(hostname)"
