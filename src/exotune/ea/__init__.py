"""Easy Adaptation (arXiv 2512.17771): black-box clients, response cache, specific small
models, underfit regions, router and the adapted model."""

from exotune.ea.answers import Routing
from exotune.ea.blackbox import BlackBoxClient, BlackBoxOutput, Ledger
from exotune.ea.cache import ResponseCache
from exotune.ea.clients import (
    CallableClient,
    OpenAIChatClient,
    OpenAIEmbeddingClient,
    ServedBoxClient,
)
from exotune.ea.model import EasyAdapter
from exotune.ea.prompt import PromptTemplate, parse_label
from exotune.ea.regions import Regions, wilson
from exotune.ea.router import POLICIES, Router
from exotune.ea.ssm import (
    SSMS,
    EmbeddingLogRegSSM,
    EmbeddingMLPSSM,
    SklearnSSM,
    TfidfLogRegSSM,
    make_ssm,
    register_ssm,
)

__all__ = [
    "POLICIES",
    "SSMS",
    "ServedBoxClient",
    "BlackBoxClient",
    "BlackBoxOutput",
    "CallableClient",
    "EasyAdapter",
    "EmbeddingLogRegSSM",
    "EmbeddingMLPSSM",
    "Ledger",
    "OpenAIChatClient",
    "OpenAIEmbeddingClient",
    "PromptTemplate",
    "Regions",
    "ResponseCache",
    "Router",
    "Routing",
    "SklearnSSM",
    "TfidfLogRegSSM",
    "make_ssm",
    "parse_label",
    "register_ssm",
    "wilson",
]
