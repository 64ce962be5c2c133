"""The layout of app/ stays navigable: no import cycle among its modules, few top-level modules;
and what was removed with the layout work stays removed."""
import ast
import re
import uuid

from rq.serializers import JSONSerializer

from devtools.services import REPO_ROOT

ROOT = REPO_ROOT
MAX_TOP_LEVEL_MODULES = 16


def app_modules():
    """{dotted name: (path, is a package)} of every module under app/."""
    modules = {}
    for path in (ROOT / "app").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if package else parts)] = (path, package)
    return modules


def imported(name, package, node, modules):
    """The app modules an import statement of module `name` names (function-level imports too)."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = name.split(".") if package else name.split(".")[:-1]
        base = ".".join(base[:len(base) - node.level + 1] + [node.module or ""] if node.level else [node.module])
        base = base.rstrip(".")
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    for target in targets:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            yield target


def import_graph():
    modules = app_modules()
    graph = {name: set() for name in modules}
    for name, (path, package) in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[name].update(imported(name, package, node, modules))
    return graph


def cycles(graph):
    """Every set of modules that import one another, round and back (Tarjan's components)."""
    index, low, stack, found = {}, {}, [], []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        for child in graph[node]:
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_among_the_modules_of_app():
    graph = import_graph()
    assert graph["app.audit.chain"] >= {"app.audit"}    # the graph sees relative imports
    assert cycles(graph) == []


def test_a_cycle_would_be_seen():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_app_keeps_at_most_16_top_level_modules():
    top = sorted(path.name for path in (ROOT / "app").glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_every_path_in_the_readme_architecture_table_exists():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    paths = [path for row in table.splitlines() if row.startswith("|")
             for path in re.findall(r"`([\w./-]+)`", row.rsplit("|", 2)[-2])]
    assert len(paths) > 20
    assert [path for path in paths if not (ROOT / path).exists()] == []


def test_a_dispatch_job_queued_by_an_earlier_release_is_refused(app):
    """Releases before the outbox queued one `workers.jobs.dispatch_trigger` job per trigger; the
    drain stores every pending trigger now, so such a job is not ours any more: refused, never run."""
    from app.queues.enqueue import queue
    from workers.jobs import JOBS
    from workers.trust import TrustedJob, refusal
    legacy = queue("dispatch", app).enqueue("workers.jobs.dispatch_trigger", str(uuid.uuid4()))
    job = TrustedJob.fetch(legacy.id, connection=app.extensions["redis"], serializer=JSONSerializer)
    assert refusal(job) == "'workers.jobs.dispatch_trigger' is not one of this service's job functions"
    assert sorted(JOBS) == ["workers.jobs.deliver", "workers.jobs.drain_triggers", "workers.jobs.purge_expired"]
