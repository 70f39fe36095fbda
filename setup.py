"""Build hook: a built wheel carries the option templates, which `hyresr install` copies into a host.

``options/`` stays the one copy in the repository (the user-facing folder, and what an editable
install reads); building copies it into the wheel as ``hyresr_arch/options/``. Everything else is
declared in setup.cfg.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

OPTIONS = Path(__file__).resolve().parent / "options"


class BuildPyWithOptions(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:  # an editable install reads options/ in place
            shutil.copytree(OPTIONS, Path(self.build_lib) / "hyresr_arch" / "options", dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildPyWithOptions})
