"""Python imports ``sitecustomize`` at start-up from the first folder of ``sys.path`` that has one:
with this folder on ``PYTHONPATH`` (``tests.faults.environment``), every process installs the test
faults' training-loop callback. It does nothing until a test arms a fault file."""
from tests import faults

faults.install()
