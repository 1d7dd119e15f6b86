"""Process plumbing: the only place that creates subprocesses, and PID 1 duties."""
