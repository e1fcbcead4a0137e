"""The worker process (``dispatcher worker``): RQ workers running the handler chain."""
