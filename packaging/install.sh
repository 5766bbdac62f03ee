#!/bin/sh
# Installs Village on a systemd-based Linux without a package manager (Debian and its
# derivatives: use the .deb, scripts/deb.sh): the binary, the server's and the runner's systemd
# units, the example configuration and the service users; then starts the server.
#
#   sudo packaging/install.sh [--binary PATH] [--prefix DIR] [--no-start]
#   sudo packaging/install.sh --uninstall [--purge]
#   packaging/install.sh --root DIR [...]     lay out the files under DIR only (for packagers)
#
# Run it again to upgrade: the binary and the units are replaced, an existing configuration is
# kept. The runner's unit is installed but not enabled: it needs /etc/village/runner.env first
# (see the comment at the top of village-runner.service).
set -eu

usage() {
    cat <<'USAGE'
Usage: install.sh [OPTIONS]

  --binary PATH     the village binary to install (default: ./village)
  --prefix DIR      installs the binary as DIR/bin/village (default: /usr/local); the units'
                    ExecStart follows it
  --unit-dir DIR    where the systemd units go (default: /etc/systemd/system)
  --root DIR        install under DIR (a DESTDIR): lays out the files only, creates no user
                    and leaves systemd alone
  --no-start        do not enable and (re)start village.service
  --uninstall       stop and remove the binary and the units; the configuration
                    (/etc/village) and the data (/var/lib/village, /var/lib/village-runner)
                    stay
  --purge           with --uninstall: remove the configuration, the data and the users too
  -h, --help        this help
USAGE
}

fail() {
    echo "install.sh: $*" >&2
    exit 1
}

# A wrong command line: exit 2.
usage_error() {
    echo "install.sh: $*" >&2
    echo "install.sh --help lists the options" >&2
    exit 2
}

here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
binary=./village
prefix=/usr/local
unit_dir=/etc/systemd/system
root=
start=yes
action=install
purge=no

# The value of an option: `--opt VALUE` or `--opt=VALUE`.
while [ $# -gt 0 ]; do
    opt=$1
    case $opt in
    --*=*)
        value=${opt#*=}
        opt=${opt%%=*}
        shift
        ;;
    --binary | --prefix | --unit-dir | --root)
        [ $# -ge 2 ] || usage_error "$opt needs a value"
        value=$2
        shift 2
        ;;
    *)
        value=
        shift
        ;;
    esac
    case $opt in
    --binary) binary=$value ;;
    --prefix) prefix=$value ;;
    --unit-dir) unit_dir=$value ;;
    --root) root=$value ;;
    --no-start) start=no ;;
    --uninstall) action=uninstall ;;
    --purge) purge=yes ;;
    -h | --help)
        usage
        exit 0
        ;;
    *) usage_error "unknown option: $opt" ;;
    esac
done

for dir in "$prefix" "$unit_dir"; do
    case $dir in
    /*) ;;
    *) usage_error "$dir: not an absolute path" ;;
    esac
    # The prefix goes into the units' ExecStart through sed.
    case $dir in
    *[!A-Za-z0-9/._+-]*) usage_error "$dir: use letters, digits and / . _ + - only" ;;
    esac
done
if [ -n "$root" ]; then
    [ -d "$root" ] || usage_error "--root $root: no such directory"
    root=$(CDPATH='' cd -- "$root" && pwd)
    [ "$root" != / ] || root=
fi
if [ "$purge" = yes ] && [ "$action" != uninstall ]; then
    usage_error "--purge goes with --uninstall"
fi
if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
    fail "run it as root (or lay out the files under a directory with --root DIR)"
fi

bin_path=$prefix/bin/village
units="village.service village-runner.service"
umask 022

say() {
    echo "village: $*"
}

skipped() {
    echo "village: skipped (--root): $*"
}

# Whether systemd manages this machine (not a container or a chroot without it).
systemd_running() {
    [ -z "$root" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

group_exists() {
    if command -v getent >/dev/null 2>&1; then
        getent group "$1" >/dev/null 2>&1
    else
        grep -q "^$1:" /etc/group
    fi
}

# A system account without a login whose home is the state directory systemd creates for the
# unit (StateDirectory=), with a group of its own name.
make_user() {
    user=$1
    home=$2
    comment=$3
    if [ -n "$root" ]; then
        skipped "creating the $user user"
        return
    fi
    if id -u "$user" >/dev/null 2>&1; then
        return
    fi
    shell=/bin/false
    for candidate in /usr/sbin/nologin /sbin/nologin /usr/bin/nologin; do
        if [ -x "$candidate" ]; then
            shell=$candidate
            break
        fi
    done
    if command -v useradd >/dev/null 2>&1; then
        if group_exists "$user"; then
            group_option="--gid $user"
        else
            group_option=--user-group
        fi
        # shellcheck disable=SC2086 # group_option is one or two words.
        useradd --system $group_option --home-dir "$home" --no-create-home --shell "$shell" \
            --comment "$comment" "$user"
    elif command -v adduser >/dev/null 2>&1; then
        group_exists "$user" || addgroup --system "$user"
        adduser --system --ingroup "$user" --home "$home" --no-create-home --shell "$shell" \
            --gecos "$comment" "$user"
    else
        fail "neither useradd nor adduser is installed: create the $user user, then run this again"
    fi
    say "created the $user user"
}

remove_user() {
    user=$1
    if [ -n "$root" ]; then
        skipped "removing the $user user"
        return
    fi
    if id -u "$user" >/dev/null 2>&1; then
        if command -v userdel >/dev/null 2>&1; then
            userdel "$user"
        elif command -v deluser >/dev/null 2>&1; then
            deluser --system "$user"
        else
            say "remove the $user user yourself (neither userdel nor deluser is installed)"
            return
        fi
        say "removed the $user user"
    fi
    if group_exists "$user"; then
        if command -v groupdel >/dev/null 2>&1; then
            groupdel "$user" || true
        elif command -v delgroup >/dev/null 2>&1; then
            delgroup --system --only-if-empty "$user" || true
        fi
    fi
}

# Writes $1 (a file) as $2 with mode $3, through a temporary file renamed into place: a running
# binary is replaced, not overwritten.
put() {
    tmp="$2.install-$$"
    cp -- "$1" "$tmp"
    chmod "$3" "$tmp"
    mv -f -- "$tmp" "$2"
}

install_files() {
    [ -f "$binary" ] || fail "$binary: no such file (build it with \`cargo build --release\` and pass --binary target/release/village)"
    for file in $units village.toml; do
        [ -f "$here/$file" ] || fail "$here/$file is missing: run the script from a checkout of the repository"
    done

    make_user village /var/lib/village "Village server"
    make_user village-runner /var/lib/village-runner "Village runner"

    mkdir -p "$root$prefix/bin" "$root$unit_dir"
    put "$binary" "$root$bin_path" 0755
    say "installed $bin_path"

    # The units run /usr/bin/village, where the Debian package puts it.
    for unit in $units; do
        sed "/^ExecStart=/s|/usr/bin/village|$bin_path|" "$here/$unit" >"$root$unit_dir/$unit.install-$$"
        chmod 0644 "$root$unit_dir/$unit.install-$$"
        mv -f -- "$root$unit_dir/$unit.install-$$" "$root$unit_dir/$unit"
        say "installed $unit_dir/$unit"
    done

    # The configuration may hold secrets: the server's group reads it, nobody else.
    if [ ! -d "$root/etc/village" ]; then
        mkdir -p "$root/etc/village"
        chmod 0750 "$root/etc/village"
    fi
    config=/etc/village/village.toml
    if [ -e "$root$config" ]; then
        say "kept the existing $config"
    else
        put "$here/village.toml" "$root$config" 0640
        if [ -n "$root" ]; then
            skipped "chgrp village /etc/village $config"
        else
            chgrp village /etc/village "$config"
            # An /etc/village that was there before: the server's group must reach its file.
            chmod g+rx /etc/village
        fi
        say "installed $config (0640; the example: every key at its default)"
    fi

    if [ -n "$root" ]; then
        skipped "systemctl daemon-reload, enable and start village.service"
        return
    fi
    if ! systemd_running; then
        say "systemd is not running here: enable village.service once it is"
        return
    fi
    systemctl daemon-reload
    if [ "$start" = no ]; then
        say "not started (--no-start): systemctl enable --now village.service"
        return
    fi
    systemctl enable village.service
    # A first start, or a restart on the new binary; a runner that runs takes the new binary too.
    systemctl restart village.service
    systemctl try-restart village-runner.service
    say "village.service runs; its first admin token is in /var/lib/village/admin-token"
}

uninstall_files() {
    if [ -n "$root" ]; then
        skipped "systemctl disable --now $units"
    elif systemd_running; then
        # shellcheck disable=SC2086 # two unit names.
        systemctl disable --now $units 2>/dev/null || true
    fi
    rm -f -- "$root$bin_path"
    say "removed $bin_path"
    for unit in $units; do
        rm -f -- "$root$unit_dir/$unit"
        say "removed $unit_dir/$unit"
    done
    if systemd_running; then
        systemctl daemon-reload
    fi
    if [ "$purge" = yes ]; then
        rm -rf -- "$root/etc/village" "$root/var/lib/village" "$root/var/lib/village-runner"
        say "removed /etc/village, /var/lib/village and /var/lib/village-runner"
        remove_user village-runner
        remove_user village
    else
        say "kept /etc/village, /var/lib/village and /var/lib/village-runner (--purge removes them)"
    fi
}

if [ "$action" = uninstall ]; then
    uninstall_files
else
    install_files
fi
