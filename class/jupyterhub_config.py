"""JupyterHub for a class on one server: every learner gets their own copy of the notebooks,
their own cache, and a Rust kernel that finds the kit already built.

Start it with `scripts/class-hub`, after `scripts/class-setup` has prepared the machine (see the
README's "Teaching a class"), as the ordinary account that installed Rust, not root; or by hand: `.venv/bin/jupyterhub -f class/jupyterhub_config.py`, with the proxy from
`class/node_modules/.bin` on the PATH.

Each learner's folder is `<class dir>/learners/<name>`: their HOME, with `flowers/notebooks` (a
copy of the notebooks, made on their first start and never overwritten) and `flowers/flowers_kit`
(a link to the kit, which the notebooks' `:dep` line finds at `../flowers_kit`). Their downloads
and features go to `~/.cache/flowers_kit`; what the teacher put in the shared cache
(`<class dir>/shared-cache`, filled by `scripts/class-setup`) is read from there.

Settings, from the environment:
- FLOWERS_CLASS_DIR       the class folder (default: .class in the repository);
- FLOWERS_HUB_URL         where the hub listens (default http://127.0.0.1:8000);
- FLOWERS_HUB_NOTEBOOK    the notebook learners land on (default 00_transfer_learning_flowers.ipynb;
                          zh-CN/00_transfer_learning_flowers.ipynb for a Chinese class);
- FLOWERS_HUB_MEM_LIMIT   memory per learner, for spawners that enforce it; the one here does
                          not (default 2G; the README gives the measured need). The spawner here runs every
                          learner's server as the user running the hub, with no isolation
                          between learners: for a class that trusts itself. The README says what
                          changes on The Littlest JupyterHub (system users, enforced limits) or
                          on Kubernetes;
- FLOWERS_HUB_AUTHENTICATOR  JupyterHub's name for one: `shared-password` (default): one
                          password for the class, FLOWERS_HUB_PASSWORD (at least 8 characters;
                          scripts/class-hub makes one if it is not set), each learner picking
                          their name, and FLOWERS_HUB_TEACHER_PASSWORD for the teachers; or
                          `pam` (the machine's accounts; the hub must run as root to check
                          them, and every learner's server would then run as root), an
                          installed one such as `github`, or `dummy` (anyone, for tests only);
- FLOWERS_HUB_LEARNERS    who may log in, comma-separated (required except with
                          shared-password, where it is optional);
- FLOWERS_HUB_TEACHERS    the hub's admins, comma-separated;
- FLOWERS_HUB_SSL_CERT, FLOWERS_HUB_SSL_KEY  a certificate and key, for a hub on the network;
- FLOWERS_HUB_ADMIN_TOKEN a token for a `class-admin` service allowed to create learners, start
                          their servers and use them (the tests drive the hub with it).
"""

import os
import pathlib
import shutil

c = get_config()  # noqa: F821 (JupyterHub's config loader defines it)

REPO = pathlib.Path(__file__).resolve().parent.parent
CLASS_DIR = pathlib.Path(os.environ.get("FLOWERS_CLASS_DIR") or REPO / ".class").resolve()
VENV = REPO / ".venv"
CLASS_DIR.mkdir(parents=True, exist_ok=True)

c.JupyterHub.bind_url = os.environ.get("FLOWERS_HUB_URL", "http://127.0.0.1:8000")
c.JupyterHub.db_url = f"sqlite:///{CLASS_DIR / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(CLASS_DIR / "jupyterhub_cookie_secret")
c.ConfigurableHTTPProxy.pid_file = str(CLASS_DIR / "jupyterhub-proxy.pid")
authenticator = os.environ.get("FLOWERS_HUB_AUTHENTICATOR", "shared-password")
c.JupyterHub.authenticator_class = authenticator
learners = {name for name in os.environ.get("FLOWERS_HUB_LEARNERS", "").split(",") if name}
c.Authenticator.allowed_users = learners
c.Authenticator.admin_users = {name for name in os.environ.get("FLOWERS_HUB_TEACHERS", "").split(",") if name}
if authenticator == "shared-password":
    # One password for the class, given out in the room; each learner picks their name (or
    # only the names in FLOWERS_HUB_LEARNERS may log in).
    c.SharedPasswordAuthenticator.user_password = os.environ.get("FLOWERS_HUB_PASSWORD", "")
    if os.environ.get("FLOWERS_HUB_TEACHER_PASSWORD"):
        c.SharedPasswordAuthenticator.admin_password = os.environ["FLOWERS_HUB_TEACHER_PASSWORD"]
    c.Authenticator.allow_all = not learners
else:
    # Never "anyone the authenticator knows" (with GitHub sign-in, every GitHub account),
    # except with the tests' dummy authenticator.
    c.Authenticator.allow_all = authenticator == "dummy"
# Passwords must not cross the room in the clear: give the hub a certificate when it listens
# on the network.
if os.environ.get("FLOWERS_HUB_SSL_CERT"):
    c.JupyterHub.ssl_cert = os.environ["FLOWERS_HUB_SSL_CERT"]
    c.JupyterHub.ssl_key = os.environ["FLOWERS_HUB_SSL_KEY"]

c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = str(CLASS_DIR / "learners" / "{username}")
c.Spawner.cmd = [str(VENV / "bin" / "jupyterhub-singleuser")]
c.Spawner.args = ["--allow-root"]
c.Spawner.default_url = "/lab/tree/" + os.environ.get("FLOWERS_HUB_NOTEBOOK", "00_transfer_learning_flowers.ipynb")
c.Spawner.mem_limit = os.environ.get("FLOWERS_HUB_MEM_LIMIT", "2G")
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
c.Spawner.notebook_dir = "~/flowers/notebooks"

# The toolchain the hub's user installed: a learner's HOME is their own folder, where rustup
# would find none.
cargo_home = os.environ.get("CARGO_HOME") or str(pathlib.Path.home() / ".cargo")
rustup_home = os.environ.get("RUSTUP_HOME") or str(pathlib.Path.home() / ".rustup")
cargo_bin = pathlib.Path(cargo_home) / "bin"
c.Spawner.environment = {
    "CARGO_HOME": cargo_home,
    "RUSTUP_HOME": rustup_home,
    # The venv's JupyterLab, the Rust kernel registered there (scripts/notebook-env.sh), cargo.
    "PATH": os.pathsep.join([str(VENV / "bin"), str(cargo_bin), os.environ.get("PATH", "/usr/bin:/bin")]),
    "JUPYTER_PATH": str(VENV / "share" / "jupyter"),
    "EVCXR_CONFIG_DIR": str(REPO / ".lab" / "evcxr"),
    # Kernel slots (scripts/evcxr-kernel) shared by the class: each kernel takes a free one, which
    # starts from the built kit's template, so no learner waits for a build.
    "FLOWERS_KIT_KERNELS_DIR": os.environ.get("FLOWERS_KIT_KERNELS_DIR") or str(REPO / ".lab" / "kernels"),
    "FLOWERS_KIT_KERNEL_SLOTS": os.environ.get("FLOWERS_KIT_KERNEL_SLOTS", "40"),
    "FLOWERS_KIT_SHARED_CACHE": str(CLASS_DIR / "shared-cache"),
}
c.Spawner.env_keep = [
    "LANG", "LC_ALL",
    # Where the photos and weights come from, for a class behind a mirror (and the tests).
    "FLOWERS_DATA_URL", "FLOWERS_WEIGHTS_URL", "FLOWERS_KIT_FETCH",
    # The learners' kernels share one rust-analyzer (scripts/evcxr-kernel, tools/evcxr): how long
    # it stays once no kernel uses it, and the switch that turns sharing off.
    "EVCXR_SHARED_ANALYZER_IDLE_SECS", "FLOWERS_KIT_SHARED_ANALYZER",
]


def prepare_learner(spawner):
    """The learner's own copy of the notebooks, made once (their edits are theirs to keep), and
    the link the notebooks' `:dep` line follows to the kit."""
    flowers = pathlib.Path(spawner.home_dir) / "flowers"
    flowers.mkdir(parents=True, exist_ok=True)
    notebooks = flowers / "notebooks"
    if not notebooks.exists():
        shutil.copytree(REPO / "notebooks", notebooks, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    kit = flowers / "flowers_kit"
    if not kit.is_symlink():
        kit.symlink_to(REPO / "flowers_kit", target_is_directory=True)


c.Spawner.pre_spawn_hook = prepare_learner

token = os.environ.get("FLOWERS_HUB_ADMIN_TOKEN")
if token:
    c.JupyterHub.services = [{"name": "class-admin", "api_token": token}]
    c.JupyterHub.load_roles = [{
        "name": "class-admin",
        "scopes": ["admin:users", "admin:servers", "access:servers", "list:users", "read:users"],
        "services": ["class-admin"],
    }]
