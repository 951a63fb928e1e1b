#!/bin/sh
# What each peer gets: which host served it and who that host says it is (the client's own
# address and port from the PROXY header, its certificate's fingerprint), then an echo.
printf '%s %s %s %s\n' "$CLUSTER_HOST" "$TCPREMOTEIP" "$TCPREMOTEPORT" "$SHA256"
exec cat
