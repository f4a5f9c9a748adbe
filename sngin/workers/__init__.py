"""The worker pool: the scheduler, the supervisor and zygote, elastic growth, one worker process
and its frame channel over pipes, and the accounting of limit kills."""
