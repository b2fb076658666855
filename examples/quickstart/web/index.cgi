#!/bin/sh
# The front page: asks the API (by its service name) and shows what it said.
# (busybox-static's wget cannot resolve names: static glibc has no NSS; nc can.)
echo "Content-Type: text/plain"
echo
answer=$(printf 'GET /cgi-bin/count.cgi HTTP/1.0\r\nHost: api\r\n\r\n' | nc -w 2 api 8000 | sed '1,/^\r*$/d')
[ -n "$answer" ] || answer="(the api did not answer)"
echo "Hello from berth! web $(hostname) asked the api: $answer"
