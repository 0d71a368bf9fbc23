"""Start the Azure ML inference server (`azmlinfsrv`) bound to 127.0.0.1 instead of 0.0.0.0.

azmlinfsrv has no host option (it always binds every interface); the benchmark keeps all traffic
on loopback, so this sets the host the server module passes to gunicorn, then runs it unchanged.
Arguments are azmlinfsrv's own (--entry_script, --model_dir, --port, --worker_count).
"""

from azureml_inference_server_http import amlserver

amlserver.DEFAULT_HOST = "127.0.0.1"  # type: ignore[attr-defined]

if __name__ == "__main__":
    amlserver.run()
