#!/bin/sh
# One connection to the counter: read a command, answer with the count.
read -r command
case "$command" in
  incr)
    flock /data/.lock sh -c 'n=$(($(cat /data/count) + 1)); echo "$n" > /data/count.new && mv /data/count.new /data/count; echo "$n"'
    ;;
  *)
    cat /data/count
    ;;
esac
