"""A stand-in for Colab's `google.colab` package, for tests (never installed for users).

Put `tests/colab_stub` on a kernel's PYTHONPATH and the notebook takes its Colab path:
`utils.runtime.in_colab()` is True and `drive.mount(path)` makes `<path>/MyDrive` a link
to the folder named by $COLAB_STUB_MYDRIVE (a new temporary folder when unset). `google`
stays a namespace package (no `google/__init__.py`), so `google.protobuf` etc. still import.
"""

from . import drive

__all__ = ["drive"]
