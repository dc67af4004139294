"""The HTTP API: the FastAPI app (`create_app`) and the uvicorn server thread (`ApiServer`)."""

from s2feature.api.app import create_app
from s2feature.api.server import ApiServer, ApiServerError

__all__ = ["ApiServer", "ApiServerError", "create_app"]
