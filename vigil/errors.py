"""The exceptions the CLI reports as one clear line instead of a traceback."""

from vigil.batch import BatchError
from vigil.dataset import DatasetError
from vigil.feast_repo import RepoError
from vigil.redis_server import RedisUnavailable
from vigil.training import TrainingError
from vigil_contracts.artifact import ArtifactError

USER_ERRORS: tuple[type[Exception], ...] = (
    ArtifactError,
    BatchError,
    DatasetError,
    RepoError,
    RedisUnavailable,
    TrainingError,
)
