"""Label and annotation keys shared by the pod builder, the backend and the CLI.

Every pod the project creates carries these labels so that one app only ever selects, watches
and deletes its own pods, and so ``python -m dask_k8s_backend gc`` can find what a dead app left.
"""

PREFIX = "dask-k8s-backend"
APP_ID = f"{PREFIX}/app-id"
APP_NAME = f"{PREFIX}/app-name"
ROLE = f"{PREFIX}/role"
EXECUTOR_ID = f"{PREFIX}/executor-id"
GROUP = f"{PREFIX}/group"
INACTIVE = f"{PREFIX}/inactive"

ROLE_WORKER = "worker"
ROLE_SCHEDULER = "scheduler"
DEFAULT_GROUP = "default"


def app_selector(app_id: str, role: str = ROLE_WORKER) -> str:
    """Label selector for one app's pods of one role."""
    return f"{APP_ID}={app_id},{ROLE}={role}"
