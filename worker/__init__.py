"""RQ workers: build each job's zip artifact and stream it to S3.

`python -m worker` starts one worker process (see __main__.py); the job function the API
enqueues is `worker.tasks.build_archive`.
"""
