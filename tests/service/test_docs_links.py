"""The README and docs/ are read by following their links: every relative link (and #anchor)
must land on a file and heading that exist, so a moved module or renamed section is caught here
rather than by the next newcomer."""
import re

from devtools.services import REPO_ROOT

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"```.*?```", re.S)


def documents():
    return [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md")),
            REPO_ROOT / "bench" / "README.md"]


def anchors(path):
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            text = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower())
            found.add(text.replace(" ", "-"))
    return found


def broken_links(path):
    for target in LINK.findall(FENCE.sub("", path.read_text())):
        if re.match(r"[a-z]+:", target):   # http(s), mailto: not fetched from CI
            continue
        file_part, _, fragment = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            yield f"{path.relative_to(REPO_ROOT)}: {target} (no such file)"
        elif fragment and (dest.suffix != ".md" or fragment not in anchors(dest)):
            yield f"{path.relative_to(REPO_ROOT)}: {target} (no such heading)"


def test_every_relative_link_in_the_docs_resolves():
    broken = [problem for path in documents() for problem in broken_links(path)]
    assert not broken, "\n".join(broken)


def test_the_readme_stays_a_page_for_a_newcomer():
    size = len((REPO_ROOT / "README.md").read_bytes())
    assert size <= 12_000, f"README.md is {size} bytes; move detail to docs/ (issue 18: at most 12 KB)"
