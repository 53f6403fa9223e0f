"""One line per contract check while ``attnkit check`` runs, then a summary.

``attnkit check`` runs pytest without its terminal output (``-p no:terminal``) and this
plugin writes instead, to a duplicate of the process's stdout taken before pytest captures it:
``[i/N] spec  backend  check  result  seconds``, the first line of each failure, and at the
end the counts, the time, and what the profile left out (with the command that runs it).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, TextIO

__all__ = ["ProgressReport"]


def _outcome(report: Any) -> str:
    if hasattr(report, "wasxfail"):
        return "xfail" if report.skipped else "XPASS"
    return str(report.outcome)


def _message(report: Any) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    text = getattr(report, "longreprtext", "") or ""
    errors = [line[1:].strip() for line in text.splitlines() if line.startswith("E ")]
    return errors[0] if errors else (text.strip().splitlines() or [""])[-1]


class ProgressReport:
    """A pytest plugin object: progress lines and a closing summary on ``stream``.

    :param stream: where to write (a text stream not captured by pytest).
    :param plugin: the plugin name checked, for the summary's ``--full`` hint.
    :param dists: its distributions, to pick its checks from what the profile left out.
    :param profile: the contract profile of the run.
    """

    def __init__(self, stream: TextIO, *, plugin: str | None, dists: set[str] | None, profile: str) -> None:
        self.stream = stream
        self.plugin = plugin
        self.dists = dists
        self.profile = profile
        self.total = 0
        self.done = 0
        self.counts: Counter[str] = Counter()
        self.started = time.perf_counter()
        self.errors: list[str] = []

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def pytest_collection_finish(self, session: Any) -> None:
        self.total = len(session.items)
        what = f"plugin {self.plugin}" if self.plugin else "every installed plugin"
        self._write(f"attnkit check: {self.total} contract checks of {what}, profile {self.profile!r}")

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            self.errors.append(_message(report))
            self._write(f"collection error: {report.nodeid or '(session)'}: {_message(report)}")

    def pytest_runtest_logreport(self, report: Any) -> None:
        # One line per test: its call, or the setup/teardown phase that decided it.
        if report.when != "call" and not (report.failed or report.skipped):
            return
        if report.when == "teardown" and not report.failed:
            return
        self.done += 1
        outcome = _outcome(report)
        self.counts[outcome] += 1
        props = dict(report.user_properties)
        spec, backend, check = props.get("attnkit_contract") or (report.nodeid, "", "")
        note = "" if outcome == "passed" else f"  {_message(report)[:160]}"
        width = len(str(self.total))
        self._write(
            f"[{self.done:>{width}}/{self.total}] {spec:<22} {backend or '-':<10} {check:<46} "
            f"{outcome:<7} {report.duration:6.2f}s{note}"
        )

    def pytest_sessionfinish(self, session: Any, exitstatus: int) -> None:
        from attnkit_contract import profiles

        elapsed = time.perf_counter() - self.started
        counts = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items())) or "nothing ran"
        self._write(f"attnkit check: {counts} in {elapsed:.1f} s")
        left = profiles.left_out(self.dists)
        if left:
            reasons = Counter(x.reason for x in left)
            self._write(f"the {self.profile!r} profile left out {len(left)} checks:")
            for reason, n in reasons.most_common():
                self._write(f"  {n:>3} x {reason}")
            target = self.plugin or ""
            self._write(f"run them too with: attnkit check {target} --full".replace("  ", " "))
