"""RQ workers: the process entry point and the job functions it runs."""
