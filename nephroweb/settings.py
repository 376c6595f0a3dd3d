"""Settings, all read from environment variables (12-factor).

The embedded defaults run the one-command demo: SQLite, a file-system Celery broker and
an in-process channel layer, so no server is needed. They are for the demo only; a
deployment sets DATABASE_URL (PostgreSQL) and REDIS_URL (Celery broker and Channels
layer). Every variable is listed in docs/configuration.md.
"""

import json
import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from ml.errors import SettingsError
from ml.mask_generator_options import check_generator_options

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean; use 1/0, true/false.")


def env_number(name: str, default: float, cast=float):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return cast(value)
    except ValueError:
        raise ImproperlyConfigured(
            f"{name}={value!r} is not a valid {cast.__name__}."
        ) from None


DATA_DIR = Path(env_str("NEPHROWEB_DATA_DIR", str(BASE_DIR / "var")))
DEBUG = env_bool("NEPHROWEB_DEBUG", False)
PRODUCTION = env_bool("NEPHROWEB_PRODUCTION", False)


def _secret_key() -> str:
    key = env_str("NEPHROWEB_SECRET_KEY")
    if key:
        return key
    if PRODUCTION:
        raise ImproperlyConfigured("NEPHROWEB_SECRET_KEY must be set in production.")
    # Demo only: a random key kept under the data folder so sessions survive restarts.
    key_file = DATA_DIR / "demo-secret-key"
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = [h for h in env_str("NEPHROWEB_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h]
CSRF_TRUSTED_ORIGINS = [
    o for o in env_str("NEPHROWEB_CSRF_TRUSTED_ORIGINS").split(",") if o
]

# A secret key shorter than this is refused in production: the length below which
# Django 5.2's deploy check (security.W009) warns.
MIN_SECRET_KEY_LENGTH = 50

if PRODUCTION:
    if DEBUG:
        raise ImproperlyConfigured("NEPHROWEB_DEBUG must be off in production.")
    if "*" in ALLOWED_HOSTS:
        raise ImproperlyConfigured("NEPHROWEB_ALLOWED_HOSTS must list host names in production, not '*'.")
    if len(SECRET_KEY) < MIN_SECRET_KEY_LENGTH:
        raise ImproperlyConfigured(
            f"NEPHROWEB_SECRET_KEY has {len(SECRET_KEY)} characters; production needs at least "
            f"{MIN_SECRET_KEY_LENGTH} random ones."
        )
    if not env_str("DATABASE_URL").startswith("postgres"):
        raise ImproperlyConfigured(
            "NEPHROWEB_PRODUCTION needs DATABASE_URL to name a PostgreSQL database; the "
            "SQLite default is for the demo only."
        )
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_CONTENT_TYPE_NOSNIFF = True

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "channels",
    "apps.accounts",
    "apps.slides",
    "apps.annotations",
    "apps.review",
    "apps.training",
    "apps.analysis",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Gives the audit log each request's client address (apps/accounts/audit.py).
    "apps.accounts.audit.AuditRequestMiddleware",
]

ROOT_URLCONF = "nephroweb.urls"
WSGI_APPLICATION = "nephroweb.wsgi.application"
ASGI_APPLICATION = "nephroweb.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database: PostgreSQL from DATABASE_URL; SQLite (WAL, so the demo's worker and web
# server can write at once) only as the demo default. Connections are closed after each
# request: under ASGI every request may run on another thread, and persistent connections
# piled up until PostgreSQL refused new clients (benchmarks/review_load.py, 3 reviewers).
DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{DATA_DIR / 'nephroweb.sqlite3'}"),
        conn_max_age=0,
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "slide-list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = DATA_DIR / "staticfiles"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "frontend" / "dist"]
# Static files come from the app and frontend/dist through Django finders, so no
# collectstatic step is needed before the server starts.
WHITENOISE_USE_FINDERS = True
MEDIA_ROOT = Path(env_str("NEPHROWEB_MEDIA_ROOT", str(DATA_DIR / "media")))

# Uploads above 2.5 MB stream to a temporary file. The slide limit is checked against
# the declared Content-Length before the body is read, and against the received size
# before the file is stored.
NEPHROWEB_MAX_UPLOAD_MB = env_number("NEPHROWEB_MAX_UPLOAD_MB", 4096, int)
NEPHROWEB_MAX_ANNOTATION_UPLOAD_MB = env_number("NEPHROWEB_MAX_ANNOTATION_UPLOAD_MB", 200, int)
FILE_UPLOAD_TEMP_DIR = None
FILE_UPLOAD_PERMISSIONS = 0o640

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "apps.accounts.api.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

# OpenAPI 3 schema of the REST API, built by drf-spectacular from the views and served
# at /api/schema/ (docs/errors.md describes what the API fuzz test checks against it).
SPECTACULAR_SETTINGS = {
    "TITLE": "nephroweb API",
    "DESCRIPTION": "Slides, SAM proposals, review, training, read-outs and the audit log.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": "/api/",
    # Request bodies get their own components, without the read-only fields.
    "COMPONENT_SPLIT_REQUEST": True,
    # Django's <int:...> matches digits only, so a negative id matches no route.
    "PATH_CONVERTER_OVERRIDES": {"int": {"type": "integer", "minimum": 0}},
    # Proposal runs and model versions share one set of "status" choices. Evaluations
    # lack "cancelled".
    "ENUM_NAME_OVERRIDES": {
        "CancellableTaskStatusEnum": "apps.annotations.models.ProposalRun.Status",
        "TaskStatusEnum": "apps.analysis.models.ModelEvaluation.Status",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "nephroweb.openapi.add_error_responses",
    ],
}

# A worker renews the lease on its task row while it works. Another worker may take the
# task over once the lease is this many seconds past its last renewal (nephroweb/leases.py).
NEPHROWEB_TASK_LEASE_S = env_number("NEPHROWEB_TASK_LEASE_S", 300, int)
if NEPHROWEB_TASK_LEASE_S < 3:
    raise ImproperlyConfigured(
        f"NEPHROWEB_TASK_LEASE_S={NEPHROWEB_TASK_LEASE_S} is too short; use at least 3 seconds."
    )

# Redis: the Celery broker and the Channels layer. Without it (demo) Celery uses a
# file-system broker and Channels an in-process layer, so worker progress reaches the
# browser through its periodic resynchronisation from the API instead of the socket.
REDIS_URL = env_str("REDIS_URL")
BROKER_DIR = DATA_DIR / "broker"

if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # Longer than the longest task (a whole-slide proposal run or a training run),
        # so Redis does not re-deliver a task that is still running.
        "visibility_timeout": env_number("NEPHROWEB_TASK_VISIBILITY_TIMEOUT_S", 12 * 3600, int),
        "global_keyprefix": env_str("NEPHROWEB_CELERY_KEY_PREFIX", ""),
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [REDIS_URL],
                "prefix": env_str("NEPHROWEB_CHANNELS_PREFIX", "nephroweb"),
                "capacity": 500,
                "expiry": 60,
            },
        }
    }
else:
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
    }
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Sign-in throttle (apps/accounts/signin_throttle.py): MAX_FAILURES failed sign-ins for
# one user name, or MAX_FAILURES_PER_IP from one client address, within WINDOW_S seconds
# lock that name or address out for LOCK_S seconds. The counters live in the "signin"
# cache: Redis when REDIS_URL is set, so that every web process shares them, otherwise
# files under DATA_DIR, which the demo's web process and manage.py unlock_signin share.
NEPHROWEB_SIGNIN_MAX_FAILURES = env_number("NEPHROWEB_SIGNIN_MAX_FAILURES", 5, int)
NEPHROWEB_SIGNIN_MAX_FAILURES_PER_IP = env_number("NEPHROWEB_SIGNIN_MAX_FAILURES_PER_IP", 20, int)
NEPHROWEB_SIGNIN_WINDOW_S = env_number("NEPHROWEB_SIGNIN_WINDOW_S", 900, int)
NEPHROWEB_SIGNIN_LOCK_S = env_number("NEPHROWEB_SIGNIN_LOCK_S", 900, int)
for _name in (
    "NEPHROWEB_SIGNIN_MAX_FAILURES", "NEPHROWEB_SIGNIN_MAX_FAILURES_PER_IP",
    "NEPHROWEB_SIGNIN_WINDOW_S", "NEPHROWEB_SIGNIN_LOCK_S",
):
    if globals()[_name] < 1:
        raise ImproperlyConfigured(f"{_name}={globals()[_name]} must be at least 1.")
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "signin": (
        {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "nephroweb-signin",
        }
        if REDIS_URL
        else {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(DATA_DIR / "signin-cache"),
            # Limitation: incr rewrites the key with this timeout, so a failure restarts the window.
            "TIMEOUT": NEPHROWEB_SIGNIN_WINDOW_S,
        }
    ),
}

CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "default"
# GPU work (proposals, segmentation, training) goes to its own queue so GPU workers
# take only that; light work stays on "default".
CELERY_TASK_ROUTES = {
    "apps.annotations.tasks.run_proposals": {"queue": "gpu"},
    "apps.annotations.tasks.run_segmentation": {"queue": "gpu"},
    "apps.training.tasks.run_training": {"queue": "gpu"},
}
CELERY_TASK_ALWAYS_EAGER = False

# Tiles: large-image keeps its own cache. A Redis URL here should point at a Redis
# instance of its own, never the broker's, so that tiles cannot crowd out queued tasks.
# Without one, each web process keeps an in-memory cache.
NEPHROWEB_TILE_CACHE_URL = env_str("NEPHROWEB_TILE_CACHE_URL")

# SAM checkpoints and proposal defaults.
NEPHROWEB_SAM_TYPE = env_str("NEPHROWEB_SAM_TYPE", "vit_b")
NEPHROWEB_SAM_CHECKPOINT = env_str("NEPHROWEB_SAM_CHECKPOINT")
NEPHROWEB_CHECKPOINT_CACHE = Path(
    env_str("NEPHROWEB_CHECKPOINT_CACHE", str(Path.home() / ".cache" / "nephroweb" / "checkpoints"))
)
# Base URL of the official checkpoints; only tests and mirrors change it.
NEPHROWEB_SAM_DOWNLOAD_BASE_URL = env_str("NEPHROWEB_SAM_DOWNLOAD_BASE_URL")
NEPHROWEB_PROPOSALS = {
    "mpp": env_number("NEPHROWEB_WORKING_MPP", 1.0),
    "points_per_side": env_number("NEPHROWEB_POINTS_PER_SIDE", 32, int),
    "pred_iou_thresh": env_number("NEPHROWEB_PRED_IOU_THRESH", 0.88),
    "stability_score_thresh": env_number("NEPHROWEB_STABILITY_SCORE_THRESH", 0.95),
    "min_area_um2": env_number("NEPHROWEB_MIN_AREA_UM2", 100.0),
    "mask_generator": env_str("NEPHROWEB_MASK_GENERATOR", "fast"),
    "encoder_dtype": env_str("NEPHROWEB_ENCODER_DTYPE", "float32"),
}
try:
    NEPHROWEB_PROPOSALS.update(json.loads(env_str("NEPHROWEB_PROPOSALS_JSON", "{}")))
except (json.JSONDecodeError, TypeError, ValueError) as exc:
    raise ImproperlyConfigured(
        f"NEPHROWEB_PROPOSALS_JSON must be a JSON object of proposal settings: {exc}."
    ) from None
try:
    check_generator_options(
        NEPHROWEB_PROPOSALS.get("mask_generator", "fast"),
        NEPHROWEB_PROPOSALS.get("encoder_dtype", "float32"),
    )
except SettingsError as exc:
    # Name the variable that contains the rejected value (the message starts with its field).
    variable = (
        "NEPHROWEB_MASK_GENERATOR" if str(exc).startswith("mask_generator")
        else "NEPHROWEB_ENCODER_DTYPE"
    )
    raise ImproperlyConfigured(f"{variable} is invalid: {exc}") from None
# Segmentation runs of a class-aware model version. The working mpp and tile size come
# from the model version; these keys (any SegmentationSettings field) override them.
NEPHROWEB_SEGMENTATION = {
    "points_per_side": env_number("NEPHROWEB_SEGMENTATION_POINTS_PER_SIDE", 32, int),
    "min_predicted_iou": env_number("NEPHROWEB_SEGMENTATION_MIN_PREDICTED_IOU", 0.7),
    "min_class_probability": env_number("NEPHROWEB_SEGMENTATION_MIN_CLASS_PROBABILITY", 0.5),
}
# Without DATABASE_URL the app runs the demo, whose model segments 256 px tiles at
# 2 µm/px, where a glomerulus covers up to 12% of a tile (ml/demo_model.py). The demo's
# worker, pages and manage.py commands then all use these settings.
DEMO_SEGMENTATION = {"points_per_side": 16, "max_area_fraction": 0.2, "min_predicted_iou": 0.5}
if not env_str("DATABASE_URL"):
    NEPHROWEB_SEGMENTATION.update(DEMO_SEGMENTATION)
NEPHROWEB_SEGMENTATION.update(json.loads(env_str("NEPHROWEB_SEGMENTATION_JSON", "{}")))
NEPHROWEB_TORCH_THREADS = env_number("NEPHROWEB_TORCH_THREADS", 0, int)

# IFTA read-out (ml.clinical.ifta). Atrophic tubules whose outlines are at most
# cluster_distance_um apart form a cluster. A cluster of at least min_tubules tubules gets
# a concave hull (shapely.concave_hull with concave_ratio) or a convex one.
NEPHROWEB_IFTA = {
    "cluster_distance_um": env_number("NEPHROWEB_IFTA_CLUSTER_DISTANCE_UM", 50.0),
    "min_tubules": env_number("NEPHROWEB_IFTA_MIN_TUBULES", 3, int),
    "hull": env_str("NEPHROWEB_IFTA_HULL", "concave"),
    "concave_ratio": env_number("NEPHROWEB_IFTA_CONCAVE_RATIO", 0.3),
}

# Classes a reviewer can assign, with their display colours and keyboard keys. The
# colours follow the class-aware SAM paper (Weijer et al.). "unspecified tubule" is
# kept on slides but never trained on or scored (trainable False). Override the whole
# list with NEPHROWEB_CLASSES_JSON.
NEPHROWEB_CLASSES = json.loads(env_str("NEPHROWEB_CLASSES_JSON", "null")) or [
    {"name": "proximal tubule", "color": "#0000ff", "key": "1", "trainable": True},
    {"name": "distal tubule", "color": "#ffff00", "key": "2", "trainable": True},
    {"name": "atrophic tubule", "color": "#87cefa", "key": "3", "trainable": True},
    {"name": "glomerulus", "color": "#ff00ff", "key": "4", "trainable": True},
    {"name": "sclerotic glomerulus", "color": "#800080", "key": "5", "trainable": True},
    {"name": "vessel", "color": "#ff0000", "key": "6", "trainable": True},
    {"name": "background", "color": "#000000", "key": "7", "trainable": True},
    {"name": "unspecified tubule", "color": "#808080", "key": "8", "trainable": False},
    {"name": "cortex", "color": "#2e8b57", "key": "9", "trainable": False},
]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {
        "refusal_without_traceback": {"()": "nephroweb.log_filters.RefusalWithoutTraceback"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("NEPHROWEB_LOG_LEVEL", "INFO")},
    "loggers": {
        "large_image": {"level": "WARNING"},
        "django.request": {"filters": ["refusal_without_traceback"]},
    },
}

# Review queue order: "predicted_iou" (lowest SAM predicted IoU first),
# "class_confidence" (lowest model class probability first) or "position".
NEPHROWEB_QUEUE_ORDER = env_str("NEPHROWEB_QUEUE_ORDER", "predicted_iou")
