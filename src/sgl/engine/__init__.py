"""The local torch engine behind ``sgl.LocalModel`` (installed by ``pip install 'sgl[local]'``)."""

from sgl._extras import require

require("the local engine (sgl.engine)", "local", "torch", "safetensors")
