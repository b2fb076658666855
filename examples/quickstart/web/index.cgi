#!/bin/sh
# The front page: asks the API (by its service name) and shows what it said.
echo "Content-Type: text/plain"
echo
answer=$(wget -q -T 2 -O- http://api:8000/cgi-bin/count.cgi) || answer="(the api did not answer)"
echo "Hello from berth! web $(hostname) asked the api: $answer"
