# A worker that reports with the sd_notify client library of Debian's
# ruby-sd-notify, which takes $NOTIFY_SOCKET only as a path (it passes it
# to connect(2) as it is). Says STATUS= and READY=1, then waits for SIGTERM.
require "sd_notify"

Signal.trap("TERM") { exit 0 }
SdNotify.status("ruby sd_notify #{Process.pid}")
SdNotify.ready
sleep
