# gsupervisor: build, test, install, demo. Needs the .NET SDK (10.0) and make; Debian's gcc and libc6-dev,
# which link the Native AOT binary, are installed when missing (packaging/need.sh).

DOTNET  ?= dotnet
CONFIG  ?= Release
PREFIX  ?= /usr/local
PORT    ?= 8080
RID     ?= $(shell $(DOTNET) --info 2>/dev/null | awk '/^ *RID:/ {print $$2; exit}')

# What users run: the Native AOT binary, its exec helper and Mono.Posix's native library, from `make publish`.
PUBLISHED  := out/publish/gsupervisor
HELLO_DLL  := examples/HelloKestrel/bin/$(CONFIG)/net10.0/HelloKestrel.dll
# The tree the integration tests drive: the .deb's contents, i.e. `make install PREFIX=out/deb/root/usr`.
TEST_ROOT  := $(CURDIR)/out/deb/root
# A Debian root with systemd, booted in a container by the tests of the packaged units (tests/systemd/).
SYSTEMD_ROOT := out/systemd-root

.PHONY: all build toolchain publish next install deb pack systemd-root test demo bench bench-reload soak clean

all: build

# The whole solution with the JIT: libraries, unit tests, examples and the test children.
build:
	$(DOTNET) build Supervisor.sln -c $(CONFIG) -nologo -clp:ErrorsOnly

toolchain:
	@packaging/need.sh gcc:gcc /usr/include/stdio.h:libc6-dev strip:binutils

# Native AOT (about a minute from a clean tree): out/publish/gsupervisor, gsupervisor-exec, libMonoPosixHelper.so;
# and in out/publish/dotnet/ the startup hook gsupervisor injects into .NET children, with the ASP.NET Core
# integration it loads (GSupervisor.AspNetCore, .Client, .Core).
publish: toolchain
	rm -rf out/publish
	$(DOTNET) publish src/GSupervisor.Daemon -c $(CONFIG) -r $(RID) -o out/publish -nologo -clp:ErrorsOnly
	$(DOTNET) publish src/GSupervisor.AspNetCore -c $(CONFIG) -p:PublishDir=$(CURDIR)/out/publish/dotnet/ -nologo -clp:ErrorsOnly
	$(DOTNET) publish src/GSupervisor.StartupHook -c $(CONFIG) -p:PublishDir=$(CURDIR)/out/publish/dotnet/ -nologo -clp:ErrorsOnly
	rm -f out/publish/dotnet/*.deps.json out/publish/dotnet/*.pdb out/publish/dotnet/*.xml

# out/next/: the same binary as a newer release would be, for the in-place upgrade tests: version NEXT_VERSION,
# and an upgrade state with a field this release does not know. Built from a copy of the tree (out/next-src), so
# its objects never mix with the real build's.
NEXT_VERSION = $(shell echo $(VERSION) | awk -F. '{ print $$1 "." $$2 "." $$3 + 1 }')
next: deb
	rm -rf out/next out/next-src
	mkdir -p out/next-src
	tar -c --exclude=./out --exclude=./.git --exclude='bin' --exclude='obj' . | tar -x -C out/next-src
	cd out/next-src && $(DOTNET) publish src/GSupervisor.Daemon -c $(CONFIG) -r $(RID) -o $(CURDIR)/out/next -nologo -clp:ErrorsOnly \
		-p:Version=$(NEXT_VERSION) -p:StateTestField=true
	cp -r $(TEST_ROOT)/usr/lib/gsupervisor/dotnet out/next/dotnet
	rm -rf out/next-src

# PREFIX/lib/gsupervisor/ holds the binary and what it loads from beside itself; PREFIX/bin/gsupervisor links
# to it. Plus the template unit, the man page and the example units.
install: publish
	install -D -m 755 out/publish/gsupervisor $(PREFIX)/lib/gsupervisor/gsupervisor
	install -m 755 out/publish/gsupervisor-exec $(PREFIX)/lib/gsupervisor/gsupervisor-exec
	install -m 644 out/publish/libMonoPosixHelper.so $(PREFIX)/lib/gsupervisor/libMonoPosixHelper.so
	strip --strip-unneeded $(PREFIX)/lib/gsupervisor/libMonoPosixHelper.so
	install -d $(PREFIX)/lib/gsupervisor/dotnet
	install -m 644 out/publish/dotnet/*.dll $(PREFIX)/lib/gsupervisor/dotnet/
	mkdir -p $(PREFIX)/bin
	ln -sfn ../lib/gsupervisor/gsupervisor $(PREFIX)/bin/gsupervisor
	install -D -m 644 packaging/systemd/gsupervisor@.service $(PREFIX)/lib/systemd/system/gsupervisor@.service
	mkdir -p $(PREFIX)/share/man/man1 $(PREFIX)/share/doc/gsupervisor/examples
	packaging/make-manpage.sh $(PREFIX)/bin/gsupervisor | gzip -9n > $(PREFIX)/share/man/man1/gsupervisor.1.gz
	install -m 644 packaging/examples/* $(PREFIX)/share/doc/gsupervisor/examples/
	install -m 644 README.md $(PREFIX)/share/doc/gsupervisor/README.md
	@echo "installed $(PREFIX)/bin/gsupervisor -> $(PREFIX)/lib/gsupervisor/gsupervisor"

DEB_ARCH := $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
VERSION  := $(shell sed -n 's:.*<Version>\(.*\)</Version>.*:\1:p' Directory.Build.props)

# out/gsupervisor_VERSION_ARCH.deb: the install layout under /usr, and maintainer scripts that upgrade running
# daemons in place on install and stop them on removal (packaging/debian/).
deb:
	rm -rf out/deb
	$(MAKE) --no-print-directory install PREFIX=$(CURDIR)/out/deb/root/usr
	mkdir -p out/deb/root/DEBIAN
	printf '%s\n' "Package: gsupervisor" "Version: $(VERSION)" "Architecture: $(DEB_ARCH)" \
		"Maintainer: gsupervisor contributors <gsupervisor@localhost>" "Section: admin" "Priority: optional" \
		"Depends: libc6 (>= 2.34), zlib1g" "Installed-Size: $$(du -sk out/deb/root/usr | cut -f1)" \
		"Description: zero-downtime restarts for network services" \
		" gsupervisor binds the listening sockets, runs the service as a child and hands it the sockets;" \
		" on reload it starts a new child on the same sockets and stops the old one once the new one is" \
		" ready, so no connection is refused or reset. Installs as a systemd unit." > out/deb/root/DEBIAN/control
	install -m 755 packaging/debian/postinst packaging/debian/prerm out/deb/root/DEBIAN/
	dpkg-deb --root-owner-group -Zxz --build out/deb/root out/gsupervisor_$(VERSION)_$(DEB_ARCH).deb

# out/packages/: GSupervisor.Core, GSupervisor.Client and GSupervisor.AspNetCore .nupkg (with README, licence
# expression and XML docs) and their .snupkg symbols.
pack:
	rm -rf out/packages
	for project in Core Client AspNetCore; do \
		$(DOTNET) pack src/GSupervisor.$$project -c $(CONFIG) -o out/packages -nologo -clp:ErrorsOnly || exit 1; done

# debootstrap of Debian 12 with systemd, made once and kept (about 300 MB, a minute or two).
systemd-root: $(SYSTEMD_ROOT)/.complete
$(SYSTEMD_ROOT)/.complete:
	@[ "$$(id -u)" = 0 ] || { echo "make: debootstrap and the container tests need root: run make test as root" >&2; exit 1; }
	@packaging/need.sh debootstrap:debootstrap systemd-nspawn:systemd-container
	tests/systemd/make-root.sh $(SYSTEMD_ROOT)

# The whole suite (about 5 minutes; the first time a minute or two more for the Debian root): unit tests (fake
# clock), integration tests against the installed native binary (real processes, sockets, signals), and the
# packaged units under a real systemd in a container.
test: build deb next pack systemd-root
	@packaging/need.sh python3:python3 /usr/lib/python3/dist-packages/prometheus_client/__init__.py:python3-prometheus-client
	rm -rf out/test-results
	GSUPERVISOR_ROOT=$(TEST_ROOT) GSUPERVISOR_DEB=$(CURDIR)/out/gsupervisor_$(VERSION)_$(DEB_ARCH).deb \
	GSUPERVISOR_NEXT=$(CURDIR)/out/next \
	GSUPERVISOR_PACKAGES=$(CURDIR)/out/packages \
	GSUPERVISOR_SYSTEMD_ROOT=$(CURDIR)/$(SYSTEMD_ROOT) \
		$(DOTNET) test Supervisor.sln -c $(CONFIG) --no-build -nologo --logger "console;verbosity=normal" \
		--logger trx --results-directory out/test-results \
		|| { tests/failures.sh out/test-results; exit 1; }

# Runs HelloKestrel under the native gsupervisor on :$(PORT). Reload with the kill command it prints; Ctrl+C stops.
demo: build publish
	@echo
	@echo "gsupervisor is starting HelloKestrel on http://localhost:$(PORT)/"
	@echo "  try:     curl localhost:$(PORT)/"
	@echo "  reload:  kill -USR2 \$$(cat out/demo.pid)    (the answer's pid and gen change; no request fails)"
	@echo "  stop:    Ctrl+C"
	@echo
	$(PUBLISHED) --listen :$(PORT) --pid-file out/demo.pid -- $(DOTNET) $(HELLO_DLL)

# gsupervisor (as `make deb` installs it) against the alternatives (Server::Starter, restart, SO_REUSEPORT
# overlap) under the same wrk load, and how light it is beside Server::Starter and systemd-socket-activate:
# writes bench/results/latest.md, bench/results/latest.png and README.md's tables (about 12 minutes).
# Installs wrk, libserver-starter-perl, gnuplot-nox and systemd from Debian when missing.
# BENCH_ARGS passes options, e.g. BENCH_ARGS="--reloads 3 --idle 5" for a quick look (written to out/bench/results;
# only a full run rewrites bench/results and the README).
bench: build deb
	bench/install-deps.sh
	$(DOTNET) bench/CompareBench/bin/$(CONFIG)/net10.0/CompareBench.dll --config $(CONFIG) $(BENCH_ARGS)

# Reload benchmark: drain vs stock Kestrel, keep-alive and new-connection load; prints a Markdown table.
bench-reload: build publish
	GSUPERVISOR=$(PUBLISHED) $(DOTNET) bench/ReloadBench/bin/$(CONFIG)/net10.0/ReloadBench.dll 10 $(CONFIG)

# 1000 reloads of a fast child under gsupervisor and under Server::Starter: fds, RSS and CPU, idle CPU afterwards.
soak: publish
	bench/install-deps.sh
	SUPERVISOR=$(PUBLISHED) bench/reload-soak.sh 1000 30

clean:
	rm -rf out
	$(DOTNET) clean Supervisor.sln -c $(CONFIG) -nologo -v q
