"""Summary of an Autobahn fuzzingclient run of scripts/autobahn: bare axum against wsguard.

    python3 summary.py REPORTS_DIR BARE_AGENT GUARDED_AGENT

Reads REPORTS_DIR/index.json (and the case reports beside it), prints one row per server with
the number of cases per outcome, then every case that is neither OK nor INFORMATIONAL with the
reason from its case report. Exits 1 when the guarded server has a FAILED case or more
NON-STRICT cases than bare axum, or when the two did not run the same, non-empty set of cases.

A case's outcome is the worse of its behaviour and its closing behaviour, read as the HTML
report colours them: a close that is FAILED or UNCLEAN fails the case, WRONG CODE and FAILED BY
CLIENT make it NON-STRICT, INFORMATIONAL is neutral.
"""

import json
import os
import sys
import textwrap

OUTCOMES = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]


def outcome(case):
    behavior = case.get("behavior")
    close = case.get("behaviorClose")
    if behavior not in ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED"):
        return "FAILED"  # FAILED, NO_CLOSE and anything newer the report also shows as "Fail"
    if close in ("FAILED", "UNCLEAN"):
        return "FAILED"
    if behavior == "NON-STRICT" or close in ("WRONG CODE", "FAILED BY CLIENT"):
        return "NON-STRICT"
    return behavior


def case_key(case_id):
    return [int(part) if part.isdigit() else part for part in case_id.split(".")]


def shorten(value, width=110):
    text = json.dumps(value) if not isinstance(value, str) else value
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def reason(reports, case):
    """Why a case is not OK, from its case report: what was expected and what happened."""
    report = {}
    name = case.get("reportfile")
    if name:
        try:
            with open(os.path.join(reports, name), encoding="utf-8") as f:
                report = json.load(f)
        except (OSError, ValueError):
            pass
    lines = []
    if report.get("expectation"):
        lines.append("expected: " + shorten(report["expectation"], 1000))
    if case.get("behavior") != "OK":
        lines.append("received: " + shorten(report.get("received", "?")))
    if case.get("behaviorClose") not in ("OK", "INFORMATIONAL"):
        lines.append(
            "close: %s (code %s)"
            % (shorten(report.get("resultClose", "?")), case.get("remoteCloseCode"))
        )
    return lines


def main(argv):
    if len(argv) != 4:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    reports, bare, guarded = argv[1:]
    with open(os.path.join(reports, "index.json"), encoding="utf-8") as f:
        index = json.load(f)
    agents = [bare, guarded]
    counts = {}
    for agent in agents:
        cases = index.get(agent, {})
        counts[agent] = {o: 0 for o in OUTCOMES}
        for case in cases.values():
            counts[agent][outcome(case)] += 1

    width = max(len(a) for a in agents + ["server"])
    print("%-*s %6s %11s %14s %14s %7s %6s" % ((width, "server") + tuple(OUTCOMES) + ("cases",)))
    for agent in agents:
        row = tuple(counts[agent][o] for o in OUTCOMES)
        print("%-*s %6d %11d %14d %14d %7d %6d" % ((width, agent) + row + (sum(row),)))

    for agent in agents:
        cases = index.get(agent, {})
        for case_id in sorted(cases, key=case_key):
            case = cases[case_id]
            result = outcome(case)
            if result in ("OK", "INFORMATIONAL"):
                continue
            print(
                "\n%s %s: %s (behaviour %s, close %s)"
                % (agent, case_id, result, case.get("behavior"), case.get("behaviorClose"))
            )
            for line in reason(reports, case):
                print(textwrap.fill(line, 100, initial_indent="    ", subsequent_indent="      "))

    problems = []
    if not index.get(bare) or set(index.get(bare, {})) != set(index.get(guarded, {})):
        problems.append("the two servers did not run the same, non-empty set of cases")
    if counts[guarded]["FAILED"]:
        problems.append("%s failed %d cases" % (guarded, counts[guarded]["FAILED"]))
    if counts[guarded]["NON-STRICT"] > counts[bare]["NON-STRICT"]:
        problems.append(
            "%s is non-strict in %d cases, %s in %d"
            % (guarded, counts[guarded]["NON-STRICT"], bare, counts[bare]["NON-STRICT"])
        )
    rank = {"NON-STRICT": 1, "FAILED": 2}
    extra = sorted(
        (
            case_id
            for case_id, case in index.get(guarded, {}).items()
            if rank.get(outcome(case), 0)
            > rank.get(outcome(index.get(bare, {}).get(case_id, {"behavior": "OK"})), 0)
        ),
        key=case_key,
    )
    if extra:
        print("\nworse than %s: %s" % (bare, ", ".join(extra)))
    print()
    if problems:
        print("autobahn: FAILED: " + "; ".join(problems))
        return 1
    print(
        "autobahn: ok: %s 0 failed and %d non-strict, %s %d non-strict"
        % (guarded, counts[guarded]["NON-STRICT"], bare, counts[bare]["NON-STRICT"])
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
