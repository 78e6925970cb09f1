"""
Check the package as users get it: ``python scripts/dist_check.py`` (``make dist-check``).

1. Build the sdist and the wheel into ``dist/`` with ``python -m build`` (the wheel from the sdist),
   and pass both through ``twine check --strict``.
2. Check what they hold: the wheel has the license, ``get_provider_info.py`` and ``py.typed``, and
   nothing outside the package (no ``tests/``); the sdist has the license and no ``tests/``.
3. Install the wheel, not the working tree, into a clean virtual environment (Airflow comes with it,
   through pip's cache), and check that Airflow lists the provider from that environment, with a
   throw-away ``AIRFLOW_HOME``.

Needs ``build`` and ``twine`` (the ``dist`` extra) in the Python that runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIST = ROOT / "dist"
PACKAGE = "airflow_capillary_audit"
DISTRIBUTION = "airflow-capillary-audit"
# What the wheel must hold, besides the license in its .dist-info/licenses/.
WHEEL_MUST_HOLD = (f"{PACKAGE}/get_provider_info.py", f"{PACKAGE}/py.typed")


class DistCheckError(Exception):
    """What the built package lacks or holds by mistake."""


def main() -> int:
    """Build, check the files, install the wheel in a clean environment; return the exit code."""
    started = time.monotonic()
    try:
        wheel, sdist = build()
        check_wheel(wheel)
        check_sdist(sdist)
        with tempfile.TemporaryDirectory(prefix="capillary-dist-check-") as folder:
            check_install(wheel, Path(folder))
    except (DistCheckError, subprocess.CalledProcessError) as error:
        print(f"\nDIST CHECK FAILED: {error}", file=sys.stderr)
        return 1
    print(f"\nDist check passed in {time.monotonic() - started:.0f} s: {wheel.name}, {sdist.name}")
    return 0


def step(message: str) -> None:
    """Print the heading of the next step."""
    print(f"\n==> {message}", flush=True)


def build() -> tuple[Path, Path]:
    """Build the sdist and the wheel into a fresh ``dist/``, run ``twine check``; return both files."""
    step("python -m build: sdist, then the wheel from it")
    shutil.rmtree(DIST, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "build", "--quiet", "--outdir", str(DIST), str(ROOT)], check=True)
    wheels, sdists = sorted(DIST.glob("*.whl")), sorted(DIST.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        raise DistCheckError(f"expected one wheel and one sdist in {DIST}, got {sorted(DIST.iterdir())}")
    step("twine check --strict")
    files = [str(path) for path in wheels + sdists]
    subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *files], check=True)
    return wheels[0], sdists[0]


def check_wheel(wheel: Path) -> None:
    """Check that the wheel holds the license and the provider's files, and nothing but the package."""
    step(f"What {wheel.name} holds")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    dist_info = next((name.split("/")[0] for name in names if name.split("/")[0].endswith(".dist-info")), "")
    problems = [f"no {name}" for name in WHEEL_MUST_HOLD if name not in names]
    if f"{dist_info}/licenses/LICENSE" not in names:
        problems.append(f"no {dist_info}/licenses/LICENSE")
    stray = sorted({name.split("/")[0] for name in names} - {PACKAGE, dist_info})
    if stray:
        problems.append(f"files outside the package: {', '.join(stray)}")
    if problems:
        raise DistCheckError(f"{wheel.name}: " + "; ".join(problems))
    print(
        f"{len(names)} files: {PACKAGE}/ (with {', '.join(n.split('/')[-1] for n in WHEEL_MUST_HOLD)}) "
        f"and {dist_info}/ (with licenses/LICENSE); no tests/"
    )


def check_sdist(sdist: Path) -> None:
    """Check that the sdist holds the license at its root, and no half of the test suite."""
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    top = names[0].split("/")[0]
    if f"{top}/LICENSE" not in names:
        raise DistCheckError(f"{sdist.name}: no {top}/LICENSE")
    if any(name.startswith(f"{top}/tests/") for name in names):
        raise DistCheckError(f"{sdist.name}: holds tests/ (see MANIFEST.in)")
    print(f"{sdist.name}: {len(names)} entries, with {top}/LICENSE")


def check_install(wheel: Path, folder: Path) -> None:
    """Install the wheel into a clean virtual environment and check that Airflow lists the provider."""
    step(f"A clean virtual environment: pip install {wheel.name} (Airflow with it)")
    venv = folder / "venv"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python, airflow = venv / "bin" / "python", venv / "bin" / "airflow"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], check=True)
    print(f"Installed in {time.monotonic() - started:.0f} s")
    # Away from the working tree, so that only the installed wheel can be imported.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update({"AIRFLOW_HOME": str(folder / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"})
    where = subprocess.run(
        [str(python), "-c", f"import {PACKAGE}; print({PACKAGE}.__file__)"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(where).is_relative_to(venv):
        raise DistCheckError(f"{PACKAGE} was imported from {where}, not from the clean environment")

    step("airflow providers list, from the clean environment")
    listed = subprocess.run(
        [str(airflow), "providers", "list", "--output", "json"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if listed.returncode != 0:
        raise DistCheckError(f"airflow providers list failed:\n{listed.stderr[-3000:]}")
    providers = {entry["package_name"]: entry for entry in json.loads(listed.stdout)}
    version = wheel.name.split("-")[1]
    entry = providers.get(DISTRIBUTION)
    if entry is None or entry["version"] != version:
        raise DistCheckError(f"Airflow lists {entry or 'no ' + DISTRIBUTION}; expected version {version}")
    print(f"Airflow lists {DISTRIBUTION} {entry['version']}: {entry['description']}")


if __name__ == "__main__":
    sys.exit(main())
