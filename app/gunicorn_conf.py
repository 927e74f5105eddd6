"""gunicorn settings for the API: `gunicorn -c app/gunicorn_conf.py "app:create_app()"`.

gthread workers, because sync workers ignore keep-alive and a keep-alive shorter than the load
balancer's idle timeout makes the LB reuse a connection gunicorn just closed (-> 502).
"""

import os
import sys

from dlkit import multiproc, telemetry

# Metrics in multiprocess mode: each worker writes its samples to files in this directory and
# GET /metrics sums them, whichever worker answers. Chosen here, before the app is loaded in the
# workers, because prometheus_client picks its storage when first imported.
METRICS_DIR = multiproc.choose_directory(prefix="dlkit-api-metrics-")

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
# GUNICORN_WORKER_CLASS=sync exists to show the failure mode: a sync worker silent for `timeout`
# seconds (any long request) is killed by the master, and nginx answers 502.
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Each worker listens on a socket of its own (SO_REUSEPORT) and Linux spreads new connections over them.
# With the one socket they would share, the worker that wakes first accepts a whole burst, and nginx's
# upstream keep-alive then carries every request over those few connections: in a third of the
# benchmark's runs one of two workers served all of them while the other idled. Linux only: elsewhere
# SO_REUSEPORT does not balance.
reuse_port = sys.platform == "linux"
# Each legacy synchronous request occupies a thread for its whole delay. (gunicorn quietly turns
# a sync worker with more than one thread into gthread, so sync means one thread.)
threads = 1 if worker_class == "sync" else int(os.environ.get("GUNICORN_THREADS", "16"))
# Longer than any LB idle timeout in front (ALB default 60 s, nginx upstream keepalive_timeout).
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE_S", "75"))
# gthread workers heartbeat from their main loop, so a long request does not trip this;
# it only kills a worker that is really stuck.
timeout = int(os.environ.get("GUNICORN_TIMEOUT_S", "30"))
graceful_timeout = 30
# gunicorn answers a request over its limits with an HTML page, so it must never be the one to
# refuse: nginx in front bounds every request first with a problem document (request line and
# each header line 8 KB, large_client_header_buffers in proxy/nginx/dlkit.conf.template), and these
# sit above that. The request line is left to nginx (0: gunicorn's own cap, 8190, is nginx's 8 KB
# less a byte or two); header lines get room for what the proxies append (X-Forwarded-For).
limit_request_line = 0
limit_request_field_size = 32768
limit_request_fields = 32768
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms rid=%({x-request-id}o)s'
errorlog = "-"
# Every line JSON (access, gunicorn's own, the app's), with request id, job id and trace id where
# there are any: dlkit/telemetry.py turns the access line's atoms into fields.
logconfig_dict = telemetry.logging_config()


def on_starting(server) -> None:
    multiproc.remove_previous_run(METRICS_DIR)  # once per master, not on every reload


def child_exit(server, worker) -> None:
    # A dead worker's counters stay in its files (so nothing it counted is lost, and its
    # replacement starts its own files, so nothing is doubled); only its live gauges must go.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
