# ServiceQ — build, run, test, install.
#   make            release build (target/release/serviceq)
#   make run        release build, then serve with conf/sq.properties
#   make test       the whole test suite (unit + integration against the real binary)
#   make install    PREFIX=/opt/serviceq DESTDIR= (no sudo here: run it as the owner of PREFIX)

PREFIX  ?= /opt/serviceq
DESTDIR ?=
CARGO   ?= cargo
BIN     := target/release/serviceq
CONFIG  ?= conf/sq.properties

.PHONY: build build-nodbg run test install uninstall clean bench

build:
	$(CARGO) build --release

# Stripped of symbols and debug info (about a quarter smaller).
build-nodbg:
	RUSTFLAGS="-C strip=symbols" $(CARGO) build --release
	@ls -l $(BIN)

run: build
	$(BIN) --config $(CONFIG)

test:
	$(CARGO) test --release

install: build
	install -d $(DESTDIR)$(PREFIX) $(DESTDIR)$(PREFIX)/config $(DESTDIR)$(PREFIX)/logs
	install -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/serviceq
	@# An operator's edited configuration is never overwritten.
	@if [ -e $(DESTDIR)$(PREFIX)/config/sq.properties ]; then \
		echo "keeping existing $(DESTDIR)$(PREFIX)/config/sq.properties"; \
	else \
		install -m 0644 conf/sq.properties $(DESTDIR)$(PREFIX)/config/sq.properties; \
	fi

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/serviceq
	@echo "left $(DESTDIR)$(PREFIX)/config and $(DESTDIR)$(PREFIX)/logs in place"

bench: build
	scripts/bench

clean:
	$(CARGO) clean
