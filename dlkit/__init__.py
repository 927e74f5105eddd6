"""dlkit: long-running downloads behind reverse proxies, the 504 problem and the async-job fix.

Shared by the API (app/) and the workers (worker/): settings, the job record and its store,
the simulated files, and S3 access. The `dlkit` command (cli.py) runs the embedded stack.
"""
