"""Running a recorded command: the child process, the sampling schedule and the composition root."""
