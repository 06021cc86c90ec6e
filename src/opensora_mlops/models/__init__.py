
from opensora_mlops.models.stdit2 import STDiT2, STDiT2Config, build_model  # noqa: F401
