#!/usr/bin/env bash
# fresh_maildir.sh MAILDIR COMMAND...: runs COMMAND (exec, so its PID is ours) with every
# @MAILROOT@ in it replaced by a new, empty mail root under $FRESH_MAILROOTS, and links
# MAILDIR/$MAILDIR_USER to the user's Maildir there, so the harness's delivery check (which
# reads MAILDIR/alice/new) still sees every message.
#
# Why: the shared harness wipes MAILDIR before each start. On ext4 without a journal (this
# VM's root file system), each inode allocated in the minute after a wipe of thousands of files
# first skips the recently freed ones (`recently_deleted`), costing the next server up to a
# few hundred µs of kernel CPU per file: a property of the wipe, not of the server. Here
# nothing is deleted while servers run; smtp.sh removes the roots at the end.
set -euo pipefail
maildir=$1; shift
roots=${FRESH_MAILROOTS:?FRESH_MAILROOTS must name a directory under /tmp}
case $roots in /tmp/?*) ;; *) echo "fresh_maildir: FRESH_MAILROOTS must be under /tmp" >&2; exit 64 ;; esac
mkdir -p "$roots" "$maildir"
root=$(mktemp -d "$roots/root.XXXXXX")
ln -sfn "$root/${MAILDIR_USER:-alice}" "$maildir/${MAILDIR_USER:-alice}"
# Start from clean page cache: `twistd mail` does not fsync and leaves up to 2 GB dirty after a
# 100 KiB run; the next server would otherwise pay for writing it out (taphost's syncfs flushes
# the whole file system, and falls back to per-file fsyncs while much else is dirty).
sync
args=()
for a in "$@"; do args+=("${a//@MAILROOT@/$root}"); done
exec "${args[@]}"
