"""The training page. Snapshots and model versions come from the API in the browser."""

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from apps.accounts.permissions import page_permission_required
from ml.training_config import TrainingConfig

from .services import DEFAULT_CROP_PX


@login_required
@page_permission_required("training.train_models")
def training_page(request):
    return render(request, "training/training.html", {
        "defaults": {
            "config": TrainingConfig().to_dict(),
            "mpp": float(settings.NEPHROWEB_PROPOSALS["mpp"]),
            "crop_px": DEFAULT_CROP_PX,
        },
        "configured_checkpoint": settings.NEPHROWEB_SAM_CHECKPOINT or "",
        "sam_type": settings.NEPHROWEB_SAM_TYPE,
    })
