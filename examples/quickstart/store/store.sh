#!/bin/sh
# One connection to the counter: read a command, answer with the count. Connections
# may run at once: a directory is the lock (mkdir is atomic).
read -r command
case "$command" in
  incr)
    until mkdir /data/.lock 2>/dev/null; do sleep 0.01; done
    n=$(($(cat /data/count) + 1))
    echo "$n" > /data/count.new && mv /data/count.new /data/count
    rmdir /data/.lock
    echo "$n"
    ;;
  *)
    cat /data/count
    ;;
esac
