"""Teachers of the retriever (being split into scorers, ensemble, check and targets)."""

from rocketkd.teachers.core import *  # noqa: F401,F403
from rocketkd.teachers.core import __all__  # noqa: F401
