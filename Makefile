# ServiceQ — build, run, test, install.
#   make            release build (target/release/serviceq)
#   make run        release build, then serve conf/sq.properties (CONFIG=path serves another file)
#   make test       the whole test suite (unit + integration against the real binary)
#   make install    PREFIX=/opt/serviceq DESTDIR= (no sudo here: run it as the owner of PREFIX)
#                   INSTALL_BIN=dist/serviceq installs that binary instead, without building
#   make static     statically linked, stripped x86-64 binary at dist/serviceq (no libssl needed)
#   make demo       the one-command tour: two demo upstreams, failover, the deferred queue

PREFIX  ?= /opt/serviceq
DESTDIR ?=
CARGO   ?= cargo
# Where cargo puts the release binary (CARGO_TARGET_DIR moves it).
BIN     := $(or $(CARGO_TARGET_DIR),target)/release/serviceq
CONFIG  ?= conf/sq.properties

.PHONY: build build-nodbg run test install uninstall clean bench static demo

build:
	$(CARGO) build --release

# Stripped of symbols and debug info (about a quarter smaller).
build-nodbg:
	RUSTFLAGS="-C strip=symbols" $(CARGO) build --release
	@ls -l $(BIN)

run: build
	$(BIN) --config $(CONFIG)

# The static binary is built first so that the suite's smoke test runs against it.
test: static
	$(CARGO) test --release --no-fail-fast

# The installed tree (PREFIX):
#   serviceq               the binary
#   config/sq.properties   never overwritten once it exists
#   logs/                  ERROR_LOG_FILE (relative to PREFIX) and the init script's stderr log
#   queue/                 for DEFERRED_Q_DIR (durable queue journal)
#   init/serviceq.init     SysV/LSB init script and systemd unit, with PREFIX filled in:
#   init/serviceq.service  copy them to /etc/init.d/serviceq or /etc/systemd/system/
# INSTALL_BIN picks the binary: the default builds target/release/serviceq first; any
# other path (dist/serviceq from `make static`, a binary built elsewhere) is installed
# as it is, without running cargo.
INSTALL_BIN ?= $(BIN)
INSTALL_DIR  = $(DESTDIR)$(PREFIX)

install: $(if $(filter $(BIN),$(INSTALL_BIN)),build)
	@test -x "$(INSTALL_BIN)" || { echo "install: no binary at $(INSTALL_BIN)" >&2; exit 1; }
	install -d "$(INSTALL_DIR)" "$(INSTALL_DIR)/config" "$(INSTALL_DIR)/logs" \
		"$(INSTALL_DIR)/queue" "$(INSTALL_DIR)/init"
	@# Replace the binary atomically: a running serviceq keeps its (unlinked) image.
	install -m 0755 "$(INSTALL_BIN)" "$(INSTALL_DIR)/.serviceq.new"
	mv -f "$(INSTALL_DIR)/.serviceq.new" "$(INSTALL_DIR)/serviceq"
	@# An operator's edited configuration is never overwritten.
	@if [ -e "$(INSTALL_DIR)/config/sq.properties" ]; then \
		echo "keeping existing $(INSTALL_DIR)/config/sq.properties"; \
	else \
		echo "install -m 0644 $(CONFIG) $(INSTALL_DIR)/config/sq.properties"; \
		install -m 0644 "$(CONFIG)" "$(INSTALL_DIR)/config/sq.properties"; \
	fi
	sed 's|/opt/serviceq|$(PREFIX)|g' scripts/serviceq.init > "$(INSTALL_DIR)/init/serviceq.init"
	chmod 0755 "$(INSTALL_DIR)/init/serviceq.init"
	sed 's|/opt/serviceq|$(PREFIX)|g' scripts/serviceq.service > "$(INSTALL_DIR)/init/serviceq.service"
	chmod 0644 "$(INSTALL_DIR)/init/serviceq.service"

# Removes what `make install` wrote except the operator's data: config/, logs/ and
# queue/ (which may hold undelivered requests) stay.
uninstall:
	@if [ -f "$(INSTALL_DIR)/serviceq.pid" ] && kill -0 "$$(cat "$(INSTALL_DIR)/serviceq.pid")" 2>/dev/null; then \
		echo "uninstall: serviceq is running (pid $$(cat "$(INSTALL_DIR)/serviceq.pid")); stop it first" >&2; exit 1; \
	fi
	rm -f "$(INSTALL_DIR)/serviceq" "$(INSTALL_DIR)/.serviceq.new" "$(INSTALL_DIR)/serviceq.pid" \
		"$(INSTALL_DIR)/init/serviceq.init" "$(INSTALL_DIR)/init/serviceq.service"
	-rmdir "$(INSTALL_DIR)/init" 2>/dev/null
	@echo "left $(INSTALL_DIR)/config, $(INSTALL_DIR)/logs and $(INSTALL_DIR)/queue in place"

# Statically linked x86-64 binary: glibc with crt-static, OpenSSL from Debian's
# libssl.a/libcrypto.a (libssl-dev). --target keeps build scripts and proc macros
# dynamic. Host names resolve through glibc's built-in files/dns sources (/etc/hosts,
# /etc/resolv.conf); other NSS modules (nss-resolve, mdns, LDAP) cannot be loaded.
# IP-literal endpoints need nothing. Check it with scripts/smoke-static.
STATIC_TARGET  := x86_64-unknown-linux-gnu
STATIC_OUT      = $(or $(CARGO_TARGET_DIR),target)/$(STATIC_TARGET)/release/serviceq
STATIC_MAX     := 8388608

static:
	OPENSSL_STATIC=1 RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols" \
		$(CARGO) build --release --target $(STATIC_TARGET)
	install -d dist
	install -m 0755 "$(STATIC_OUT)" dist/serviceq
	@file dist/serviceq | grep -Eq 'statically linked|static-pie linked' || \
		{ echo "static: dist/serviceq is not statically linked" >&2; file dist/serviceq >&2; exit 1; }
	@size=$$(wc -c < dist/serviceq); \
		if [ "$$size" -gt $(STATIC_MAX) ]; then echo "static: dist/serviceq is $$size bytes (> 8 MiB)" >&2; exit 1; fi; \
		echo "dist/serviceq: $$size bytes, statically linked"

# The tour: scripts/demo (narrated; exits non-zero if any step's expectation fails).
demo: build
	SERVICEQ_BIN=$(BIN) scripts/demo

bench: build
	scripts/bench

clean:
	$(CARGO) clean
