"""Build hook: the wheel carries the top-level ``conf/`` as ``embedft/conf``.

``conf/`` stays the one source of the Hydra configs; ``pip install .`` (or a wheel from an index)
gets a copy inside the package, where ``embedft.paths.conf_dir`` finds it. An editable install
(``pip install -e .``) copies nothing: the package then runs from the checkout, beside ``conf/``.
Everything else about the package is in ``pyproject.toml``.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithConf(build_py):
    """``build_py`` plus every ``conf/**/*.yaml`` copied to ``<build>/embedft/conf``."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        for source in sorted(Path("conf").rglob("*.yaml")):
            target = Path(self.build_lib, "embedft", source)
            self.mkpath(str(target.parent))
            self.copy_file(str(source), str(target))


setup(cmdclass={"build_py": BuildPyWithConf})
