"""What the server says about itself: the access log and metrics (the Observer), log setup and
the stderr writer thread, live tails, the event-loop lag probe, per-tenant series, request
traces and the notes a request's parts leave for its log line."""
