"""The MM core firmware image: its build tool and verifier.

The MM core is an assembly program (``firmware_blobs/mm_core/*.s``) assembled by keystone into a
flat blob that is committed with a manifest. Keystone 0.9.2 encodes some forms silently wrong
(``/work/shared/reference/unicorn_probe.md`` section 7), so :mod:`smmemu.firmware.build` reads every
instruction back with capstone before it accepts a build. Only :mod:`smmemu.firmware.assembler`
imports keystone; importing this package does not, so loading a committed image needs no assembler.
"""

from __future__ import annotations
