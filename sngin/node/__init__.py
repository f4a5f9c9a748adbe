"""Several server processes and nodes: the supervising parent, the hub and the links of its
processes, their shares of the settings, the cluster bus on Redis, and purges."""
