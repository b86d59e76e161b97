"""The first module a warm template imports: the cyclic garbage collector is paused while the libraries
import. torch and transformers create hundreds of thousands of objects as they import, and the
collector otherwise walks them over and over: about a sixth of the template's start-up here
(scripts/template_start.py).
bench.run.template.gc_freeze, the last module, collects once and resumes it.
"""

from __future__ import annotations

import gc

gc.disable()
