"""The end of `make mutate`: the score, and every mutant the tests did not kill.

Reads mutmut's results in mutants/ for the files in [tool.mutmut] only_mutate; run it from
the repository root with the venv's python. --diff also prints each one's change (what
`mutmut show NAME` prints).
"""
import sys
from collections import Counter

from mutmut.mutation.data import SourceFileMutationData
from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code
from mutmut.utils.file_utils import walk_mutatable_files


def main(argv: list[str]) -> int:
    counts: Counter[str] = Counter()
    left: list[tuple[str, str, str]] = []  # (path, mutant, status) of every mutant not killed
    for path in walk_mutatable_files():
        data = SourceFileMutationData(path=path)
        data.load()
        for name, exit_code in data.exit_code_by_key.items():
            status = status_by_exit_code[exit_code]
            counts[status] += 1
            if status not in ("killed", "not checked"):  # not checked: an interrupted run
                left.append((str(path), name, status))
    tested = sum(counts.values()) - counts["not checked"]
    if not tested:
        print("no mutmut results in mutants/: run `make mutate` first")
        return 1
    for path, name, status in left:
        print(f"{status:>10}  {name}")
        if "--diff" in argv:
            print(get_diff_for_mutant(name, path=path), end="\n\n")
    others = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if s != "killed")
    print(f"mutation score: {counts['killed']} killed / {tested} tested = {100 * counts['killed'] / tested:.1f}%"
          f" ({others or 'none left'})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
