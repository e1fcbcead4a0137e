"""Configuration: one object, built once at the edge from the environment and `.env`."""

from __future__ import annotations

import ipaddress
import os
import string
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dispatcher import tunables
from dispatcher._text import REDIS_URL_SCHEMES, error_message, is_http_url, url_problem
from dispatcher.redact import protect_environment, protect_settings

__all__ = ["ConfigError", "Settings", "load_settings"]


class ConfigError(Exception):
    """A setting is missing or invalid; the message names the environment variable."""


# The shortest DISPATCHER_API_TOKEN taken (each, when several are given for rotation).
MIN_API_TOKEN_LENGTH = 24

# What DISPATCHER_INLINE_ASSESSMENT_URL may name.
_URL_PLACEHOLDERS = ("order_id", "integration_id", "package_id")


def _split_pairs(value: object, form: str) -> object:
    """``a=1,b=2`` as {"a": "1", "b": "2"} (the value after the last ``=``: integration ids
    hold ``:``, never ``=``)."""
    if not isinstance(value, str):
        return value
    parsed: dict[str, str] = {}
    for item in value.split(","):
        if not item.strip():
            continue
        name, sep, number = item.rpartition("=")
        if not sep or not name.strip():
            raise ValueError(f"expected {form}, got {item!r}")
        parsed[name.strip()] = number.strip()
    return parsed


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every setting of the dispatcher, named by its environment variable.

    The names are a contract shared with other tools and the docs: do not rename them.
    """

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        # `DISPATCHER_POLL_INTERVAL=` means unset, as an empty `KOMBO_API_KEY=` does: an
        # emptied line of a .env or a Procfile must not be a number that fails to parse.
        env_ignore_empty=True,
        extra="ignore",
        populate_by_name=True,
        frozen=True,
    )

    redis_url: SecretStr = Field(
        SecretStr("redis://localhost:6379/0"),
        alias="REDIS_URL",
        description=(
            "Redis connection URL (redis://, rediss://, unix://, redis+sentinel://, "
            "rediss+sentinel://); may hold a password."
        ),
    )
    redis_min_replicas_ack: int = Field(
        0,
        alias="DISPATCHER_REDIS_MIN_REPLICAS_ACK",
        ge=0,
        le=16,
        description="Replicas that must acknowledge a dispatch or step record (WAIT); 0: none.",
    )
    redis_replicas_ack_timeout: float = Field(
        1.0,
        alias="DISPATCHER_REDIS_REPLICAS_ACK_TIMEOUT",
        gt=0,
        le=60,
        description="Seconds to wait for those acknowledgements before failing (retryably).",
    )
    kombo_api_key: SecretStr | None = Field(None, alias="KOMBO_API_KEY")
    kombo_base_url: str = Field("https://api.kombo.dev/v1", alias="KOMBO_BASE_URL")
    kombo_integration_ids: Annotated[list[str], NoDecode] = Field(
        default_factory=list, alias="KOMBO_INTEGRATION_IDS"
    )
    handlers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["log"], alias="DISPATCHER_HANDLERS"
    )
    namespace: str = Field(
        "dispatcher", alias="DISPATCHER_NAMESPACE", pattern=r"^[A-Za-z0-9_.\-]+$", max_length=64
    )
    # Defaults to "{namespace}-orders" (see _queue_per_namespace), so that two namespaces on
    # one Redis do not share a queue and pick up each other's jobs.
    queue: str = Field("dispatcher-orders", alias="DISPATCHER_QUEUE", pattern=r"^[A-Za-z0-9_.\-]+$")
    poll_interval: float = Field(tunables.POLL_INTERVAL, alias="DISPATCHER_POLL_INTERVAL", gt=0)
    orders_endpoint: Literal["orders", "open"] = Field("orders", alias="DISPATCHER_ORDERS_ENDPOINT")
    # Beyond the contract: tuning knobs with safe defaults.
    page_size: int = Field(
        tunables.KOMBO_PAGE_SIZE_MAX,
        alias="DISPATCHER_PAGE_SIZE",
        ge=1,
        le=tunables.KOMBO_PAGE_SIZE_MAX,
    )
    full_sweep_interval: float = Field(
        tunables.FULL_SWEEP_INTERVAL, alias="DISPATCHER_FULL_SWEEP_INTERVAL", gt=0
    )
    incremental_overlap: float = Field(
        tunables.INCREMENTAL_OVERLAP, alias="DISPATCHER_INCREMENTAL_OVERLAP", ge=0
    )
    lease_ttl: float = Field(tunables.LEASE_TTL, alias="DISPATCHER_LEASE_TTL", gt=0)
    backoff_cap: float = Field(tunables.SWEEP_BACKOFF_CAP, alias="DISPATCHER_BACKOFF_CAP", gt=0)
    seen_retention: float = Field(tunables.SEEN_RETENTION, alias="DISPATCHER_SEEN_RETENTION", ge=0)
    prune_after_sweeps: int = Field(
        tunables.PRUNE_AFTER_SWEEPS, alias="DISPATCHER_PRUNE_AFTER_SWEEPS", ge=1
    )
    sweep_concurrency: int = Field(
        tunables.SWEEP_CONCURRENCY, alias="DISPATCHER_SWEEP_CONCURRENCY", ge=1, le=256
    )
    # Seconds between the reconciler's passes (store/reconcile.py), one poller at a time.
    reconcile_interval: float = Field(300.0, alias="DISPATCHER_RECONCILE_INTERVAL", gt=0)
    kombo_timeout: float = Field(tunables.KOMBO_TIMEOUT, alias="KOMBO_TIMEOUT", gt=0)
    kombo_retry_budget: float = Field(
        120.0,
        alias="KOMBO_RETRY_BUDGET",
        ge=0,
        description="Longest total time one Kombo request may spend retrying.",
    )
    # Limits on what Kombo may answer: far above a real listing, they turn an endless or
    # enormous answer into one integration's error instead of a stuck or swollen poller.
    max_pages_per_sweep: int = Field(
        20_000,
        alias="DISPATCHER_MAX_PAGES_PER_SWEEP",
        ge=1,
        description="Pages one sweep of one integration may read (cursors that never end).",
    )
    max_response_bytes: int = Field(
        32 * 1024 * 1024,
        alias="DISPATCHER_MAX_RESPONSE_BYTES",
        ge=1024,
        description="Largest Kombo answer read, decompressed; a larger one fails the request.",
    )
    job_timeout: int = Field(600, alias="DISPATCHER_JOB_TIMEOUT", gt=0)
    # RQ forks a work horse per job by default; without, a job runs in its worker process.
    fork_per_job: bool = Field(True, alias="DISPATCHER_FORK_PER_JOB")
    worker_threads: int = Field(
        1,
        alias="DISPATCHER_WORKER_THREADS",
        ge=1,
        le=1000,
        description="Jobs one worker process runs at once, each in a thread (above 1, jobs "
        "run in the worker process whatever DISPATCHER_FORK_PER_JOB says).",
    )
    worker_shutdown_timeout: float = Field(
        25.0,
        alias="DISPATCHER_WORKER_SHUTDOWN_TIMEOUT",
        ge=0,
        description="On SIGTERM, seconds a threaded worker lets the jobs in flight finish "
        "before it puts the rest back on the queue and exits.",
    )
    max_retries: int = Field(
        5, alias="DISPATCHER_MAX_RETRIES", ge=0, le=50, description="Retries of a failing job."
    )
    retry_backoff: float = Field(
        10.0,
        alias="DISPATCHER_RETRY_BACKOFF",
        ge=0,
        description="First retry delay in seconds; doubles per retry, capped at one hour.",
    )
    handler_timeout: float = Field(60.0, alias="DISPATCHER_HANDLER_TIMEOUT", gt=0)
    handler_timeouts: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict,
        alias="DISPATCHER_HANDLER_TIMEOUTS",
        description="Per-handler timeouts, e.g. provision_http=30,notify_email=20.",
    )
    max_in_flight_per_integration: int | None = Field(
        None,
        alias="DISPATCHER_MAX_IN_FLIGHT_PER_INTEGRATION",
        ge=1,
        description="Orders of one integration fed or running at once, across every worker "
        "(unset: no cap).",
    )
    max_in_flight_overrides: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=dict,
        alias="DISPATCHER_MAX_IN_FLIGHT_OVERRIDES",
        description="Per-integration caps, e.g. greenhouse:ABC=2,lever:XYZ=20 (0: no cap).",
    )
    result_ttl: int = Field(tunables.RESULT_TTL, alias="DISPATCHER_RESULT_TTL", ge=0)
    failure_ttl: int = Field(tunables.FAILURE_TTL, alias="DISPATCHER_FAILURE_TTL", ge=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", alias="DISPATCHER_LOG_LEVEL"
    )
    # The webhook receiver (`dispatcher web`).
    kombo_webhook_secret: SecretStr | None = Field(
        None,
        alias="KOMBO_WEBHOOK_SECRET",
        description=(
            "Kombo's webhook signing secret; without it `dispatcher web` serves no receiver"
            " (/webhooks/kombo answers 404)."
        ),
    )
    accepted_packages: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        alias="DISPATCHER_ACCEPTED_PACKAGES",
        description="Package ids the receiver accepts (comma-separated); empty accepts all.",
    )
    inline_assessment_url: str | None = Field(
        None,
        alias="DISPATCHER_INLINE_ASSESSMENT_URL",
        description=(
            "Link answered to inline-assessment webhooks; may use {order_id}, "
            "{integration_id} and {package_id}."
        ),
    )

    # `dispatcher web`: bounds on what an unauthenticated client may hold (see web.py).
    web_header_timeout: float = Field(
        10.0,
        alias="DISPATCHER_WEB_HEADER_TIMEOUT",
        gt=0,
        description="Seconds a client has to send a request's headers; then it is disconnected.",
    )
    web_body_timeout: float = Field(
        30.0,
        alias="DISPATCHER_WEB_BODY_TIMEOUT",
        gt=0,
        description="Seconds any request (webhook, results PUT, console form) has to send its "
        "body once its headers are in; then 408.",
    )
    web_body_budget: int = Field(
        8 * 1024 * 1024,
        alias="DISPATCHER_WEB_BODY_BUDGET",
        ge=1024 * 1024,
        description="Bytes of request bodies being read at once, across requests; then 503.",
    )
    web_max_connections: int = Field(
        1000,
        alias="DISPATCHER_WEB_MAX_CONNECTIONS",
        ge=1,
        description="Open connections (or requests) beyond which `dispatcher web` answers 503.",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        alias="DISPATCHER_TRUSTED_PROXIES",
        description="Addresses or networks (comma-separated) of the reverse proxies whose "
        "X-Forwarded-For `dispatcher web` believes; empty: none.",
    )
    webhook_confirm: bool = Field(
        True,
        alias="DISPATCHER_WEBHOOK_CONFIRM",
        description="Confirm each webhook order OPEN with Kombo before dispatching it "
        "(a replayed delivery then dispatches nothing); needs KOMBO_API_KEY.",
    )
    webhook_confirm_timeout: float = Field(
        3.0,
        alias="DISPATCHER_WEBHOOK_CONFIRM_TIMEOUT",
        gt=0,
        le=60,
        description="Seconds the receiver waits for Kombo's confirmation before it keeps the "
        "order to confirm later.",
    )

    # The operator console (`dispatcher web`, dispatcher/web/console/).
    console_token: SecretStr | None = Field(
        None,
        alias="DISPATCHER_CONSOLE_TOKEN",
        description="Password of the operator console at /; the console is off without it.",
    )
    console_session_ttl: float = Field(
        8 * 3600.0,
        alias="DISPATCHER_CONSOLE_SESSION_TTL",
        gt=0,
        description="Seconds a console login lasts.",
    )
    console_login_attempts: int = Field(
        10,
        alias="DISPATCHER_CONSOLE_LOGIN_ATTEMPTS",
        ge=1,
        description="Console login attempts allowed per client address and window; then 429.",
    )
    console_login_window: int = Field(
        300,
        alias="DISPATCHER_CONSOLE_LOGIN_WINDOW",
        ge=1,
        description="Seconds of the console's login rate-limit window.",
    )
    # The way back: results to Kombo through the outbox (dispatcher/store/results.py).
    # Defaults to "{namespace}-results" (see _queue_per_namespace).
    results_queue: str = Field(
        "dispatcher-results", alias="DISPATCHER_RESULTS_QUEUE", pattern=r"^[A-Za-z0-9_.\-]+$"
    )
    api_token: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        alias="DISPATCHER_API_TOKEN",
        description="Bearer token(s) of the results API, comma-separated (rotation).",
    )
    result_max_bytes: int = Field(
        10 * 1024 * 1024,
        alias="DISPATCHER_RESULT_MAX_BYTES",
        ge=1024,
        description="Largest result body the results API takes (413 beyond).",
    )
    kombo_write_concurrency: int = Field(
        10,
        alias="DISPATCHER_KOMBO_WRITE_CONCURRENCY",
        ge=1,
        le=30,
        description="Kombo writes in flight per integration, across every process.",
    )
    result_retry_for: float = Field(
        tunables.RESULT_RETRY_FOR,
        alias="DISPATCHER_RESULT_RETRY_FOR",
        gt=0,
        description="How long a result's write is retried before it is failed.",
    )
    stale_after: float = Field(
        14 * 24 * 3600.0,
        alias="DISPATCHER_STALE_AFTER",
        gt=0,
        description="Age of a provisioned order without a final result that status reports.",
    )

    @model_validator(mode="before")
    @classmethod
    def _queue_per_namespace(cls, data: object) -> object:
        if isinstance(data, dict) and "DISPATCHER_QUEUE" not in data and "queue" not in data:
            namespace = data.get("DISPATCHER_NAMESPACE", data.get("namespace", "dispatcher"))
            if isinstance(namespace, str):
                data = {**data, "DISPATCHER_QUEUE": f"{namespace}-orders"}
        if (
            isinstance(data, dict)
            and "DISPATCHER_RESULTS_QUEUE" not in data
            and "results_queue" not in data
        ):
            namespace = data.get("DISPATCHER_NAMESPACE", data.get("namespace", "dispatcher"))
            if isinstance(namespace, str):
                data = {**data, "DISPATCHER_RESULTS_QUEUE": f"{namespace}-results"}
        return data

    @field_validator("api_token", mode="before")
    @classmethod
    def _tokens(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("api_token")
    @classmethod
    def _strong_api_tokens(cls, value: list[SecretStr]) -> list[SecretStr]:
        # A short bearer token is guessed online (2 characters fell in 0.3 s); the length of
        # a weak one is named, never the token.
        for n, token in enumerate(value, 1):
            if len(token.get_secret_value()) < MIN_API_TOKEN_LENGTH:
                raise ValueError(
                    f"token {n} is {len(token.get_secret_value())} characters long, at least "
                    f"{MIN_API_TOKEN_LENGTH} required (it guards the results API)"
                )
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_any_case(cls, value: object) -> object:
        # --log-level (the same variable, read by click) takes any case.
        return value.upper() if isinstance(value, str) else value

    @field_validator("kombo_integration_ids", "handlers", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("handler_timeouts", mode="before")
    @classmethod
    def _timeouts(cls, value: object) -> object:
        return _split_pairs(value, "handler=seconds")

    @field_validator("max_in_flight_overrides", mode="before")
    @classmethod
    def _caps(cls, value: object) -> object:
        return _split_pairs(value, "integration=cap")

    @field_validator("max_in_flight_overrides")
    @classmethod
    def _non_negative_caps(cls, value: dict[str, int]) -> dict[str, int]:
        for integration, cap in value.items():
            if cap < 0:
                raise ValueError(f"cap of {integration} must be 0 (no cap) or more")
        return value

    @field_validator("handler_timeouts")
    @classmethod
    def _positive_timeouts(cls, value: dict[str, float]) -> dict[str, float]:
        for name, seconds in value.items():
            if seconds <= 0:
                raise ValueError(f"timeout of {name} must be positive")
        return value

    def timeout_for(self, handler: str) -> float:
        """The timeout of one handler's step, in seconds."""
        return self.handler_timeouts.get(handler, self.handler_timeout)

    def retry_intervals(self) -> list[int]:
        """Backoff before each retry: doubling from DISPATCHER_RETRY_BACKOFF, capped at 1 h."""
        return [
            int(min(3600.0, self.retry_backoff * 2**attempt)) for attempt in range(self.max_retries)
        ]

    @field_validator("kombo_integration_ids")
    @classmethod
    def _unique_integrations(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @field_validator("handlers")
    @classmethod
    def _handlers_given(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one handler")
        if len(set(value)) != len(value):
            raise ValueError("a handler is named twice")
        return value

    @field_validator("kombo_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not is_http_url(value):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().lower().startswith(REDIS_URL_SCHEMES):
            raise ValueError(
                "must start with redis://, rediss://, unix://, redis+sentinel:// or "
                "rediss+sentinel://"
            )
        # A malformed URL is a setting to fix (exit 2), said without the URL: it holds the
        # password (redis-py and urllib raise with a traceback, or echo the netloc).
        problem = url_problem(value.get_secret_value())
        if problem is not None:
            raise ValueError(f"malformed URL: {problem}")
        return value

    @field_validator("console_token")
    @classmethod
    def _strong_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (it is the console's password)")
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies_csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"{item[:60]!r} is not an IP address or network (e.g. 10.0.0.5 or 10.0.0.0/8)"
                ) from None
        return value

    @field_validator("accepted_packages", mode="before")
    @classmethod
    def _packages_csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("inline_assessment_url")
    @classmethod
    def _url_template(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not is_http_url(value):
            raise ValueError("must start with http:// or https://")
        try:
            fields = [name for _, name, _, _ in string.Formatter().parse(value) if name is not None]
        except ValueError:
            raise ValueError("is not a valid template (unbalanced braces)") from None
        unknown = sorted(set(fields) - set(_URL_PLACEHOLDERS))
        if unknown:
            raise ValueError(
                f"unknown placeholder {{{unknown[0]}}} (use {{order_id}}, {{integration_id}}, "
                "{package_id})"
            )
        return value

    def require_webhook_secret(self) -> SecretStr:
        """The webhook secret, or a ConfigError naming KOMBO_WEBHOOK_SECRET when it is not set."""
        secret = self.kombo_webhook_secret
        if secret is None or not secret.get_secret_value():
            raise ConfigError(
                "KOMBO_WEBHOOK_SECRET: not set (the webhook receiver needs it to verify "
                "Kombo's signatures)"
            )
        return secret

    def require_kombo(self) -> SecretStr:
        """The API key, or a ConfigError naming KOMBO_API_KEY when it is not set."""
        if self.kombo_api_key is None or not self.kombo_api_key.get_secret_value():
            raise ConfigError("KOMBO_API_KEY: not set (the Kombo API key is required to poll)")
        return self.kombo_api_key


def load_settings(**overrides: object) -> Settings:
    """Build the settings, turning a validation error into a one-line ConfigError.

    The message names the environment variable of every invalid setting (``A: problem;
    B: problem``) and never echoes a value, which may be a secret. Every secret of the
    settings is registered to be masked in logs and failure reasons (:mod:`dispatcher.redact`).
    """
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(
            "; ".join(
                f"{_env_name(error['loc']) or 'settings'}: {error_message(error)}"
                for error in exc.errors()
            )
        ) from None
    protect_settings(settings)
    # The handlers' secrets too (SMTP_URL, PROVISION_TOKEN...): a process that does not build
    # the chain still shows text workers and vendors wrote.
    protect_environment(os.environ)
    return settings


def _env_name(location: Sequence[int | str]) -> str:
    """The environment variable of the field an error is about."""
    if not location:
        return ""
    loc = str(location[0])
    field = Settings.model_fields.get(loc)
    if field is not None and field.alias:
        return field.alias
    return loc
