# Shared helpers of the CI scripts (sourced, not run).

# ensure_venv DIR REQUIREMENTS: a Python venv at DIR with the pinned REQUIREMENTS installed;
# rebuilt only when the requirements file changed (a stamp inside the venv remembers it), so
# a second CI run on the same machine installs nothing. Prints nothing on stdout.
ensure_venv() {
    local dir=$1 requirements=$2
    local stamp=$dir/requirements.installed
    if [[ -x $dir/bin/python ]] && cmp -s "$requirements" "$stamp"; then
        return 0
    fi
    echo "ci: creating $dir from $requirements" >&2
    rm -rf "$dir"
    python3 -m venv "$dir"
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" >&2
    cp "$requirements" "$stamp"
}

# apt_install PACKAGE...: installs Debian packages (CI runs as root on Debian).
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "$@" >/dev/null
}

