# gsupervisor: build, test, install, demo. Needs only the .NET SDK (10.0) and make.

DOTNET  ?= dotnet
CONFIG  ?= Release
PREFIX  ?= /usr/local
PORT    ?= 8080
RID     ?= $(shell $(DOTNET) --info 2>/dev/null | awk '/^ *RID:/ {print $$2; exit}')

DAEMON_BIN := src/GSupervisor.Daemon/bin/$(CONFIG)/net10.0/gsupervisor
HELLO_DLL  := examples/HelloKestrel/bin/$(CONFIG)/net10.0/HelloKestrel.dll

.PHONY: all build test publish install deb demo bench bench-reload soak clean

all: build

build:
	$(DOTNET) build Supervisor.sln -c $(CONFIG) -nologo -clp:ErrorsOnly

# The whole suite: unit tests (fake clock) and integration tests (real binary, processes, sockets, signals).
test: build
	$(DOTNET) test Supervisor.sln -c $(CONFIG) --no-build -nologo --logger "console;verbosity=normal"

# Self-contained, trimmed, single-file, ReadyToRun: one file that needs no .NET runtime on the target.
# (Only the framework is trimmed: CommandLineParser and Mono.Posix use reflection and are kept whole.)
PUBLISH_FLAGS := -c $(CONFIG) -r $(RID) --self-contained true -p:PublishSingleFile=true \
	-p:PublishTrimmed=true -p:TrimMode=partial -p:SuppressTrimAnalysisWarnings=true \
	-p:PublishReadyToRun=true -p:IncludeNativeLibrariesForSelfExtract=true -p:DebugType=none \
	-p:GenerateDocumentationFile=false
DEB_ARCH := $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
VERSION  := $(shell sed -n 's:.*<Version>\(.*\)</Version>.*:\1:p' Directory.Build.props)

publish:
	rm -rf out/publish
	$(DOTNET) publish src/GSupervisor.Daemon $(PUBLISH_FLAGS) -o out/publish -nologo -clp:ErrorsOnly

# PREFIX/bin/gsupervisor plus the template unit, the man page and the example units.
install: publish
	install -D -m 755 out/publish/gsupervisor $(PREFIX)/bin/gsupervisor
	install -D -m 644 packaging/systemd/gsupervisor@.service $(PREFIX)/lib/systemd/system/gsupervisor@.service
	mkdir -p $(PREFIX)/share/man/man1 $(PREFIX)/share/doc/gsupervisor/examples
	packaging/make-manpage.sh out/publish/gsupervisor | gzip -9n > $(PREFIX)/share/man/man1/gsupervisor.1.gz
	install -m 644 packaging/examples/* $(PREFIX)/share/doc/gsupervisor/examples/
	install -m 644 README.md $(PREFIX)/share/doc/gsupervisor/README.md
	@echo "installed $(PREFIX)/bin/gsupervisor"

# out/gsupervisor_VERSION_ARCH.deb: the install layout under /usr.
deb:
	rm -rf out/deb
	$(MAKE) --no-print-directory install PREFIX=$(CURDIR)/out/deb/root/usr
	mkdir -p out/deb/root/DEBIAN
	printf '%s\n' "Package: gsupervisor" "Version: $(VERSION)" "Architecture: $(DEB_ARCH)" \
		"Maintainer: gsupervisor contributors <gsupervisor@localhost>" "Section: admin" "Priority: optional" \
		"Depends: libc6 (>= 2.34)" "Installed-Size: $$(du -sk out/deb/root/usr | cut -f1)" \
		"Description: zero-downtime restarts for network services" \
		" gsupervisor binds the listening sockets, runs the service as a child and hands it the sockets;" \
		" on reload it starts a new child on the same sockets and stops the old one once the new one is" \
		" ready, so no connection is refused or reset. Installs as a systemd unit." > out/deb/root/DEBIAN/control
	dpkg-deb --root-owner-group -Zxz --build out/deb/root out/gsupervisor_$(VERSION)_$(DEB_ARCH).deb

# Runs HelloKestrel under gsupervisor on :$(PORT). Reload with the kill command it prints; Ctrl+C stops.
demo: build
	@echo
	@echo "gsupervisor is starting HelloKestrel on http://localhost:$(PORT)/"
	@echo "  try:     curl localhost:$(PORT)/"
	@echo "  reload:  kill -USR2 \$$(cat out/demo.pid)    (the answer's pid and gen change; no request fails)"
	@echo "  stop:    Ctrl+C"
	@echo
	@mkdir -p out
	$(DAEMON_BIN) --listen :$(PORT) --pid-file out/demo.pid -- $(DOTNET) $(HELLO_DLL)

# gsupervisor against the alternatives (Server::Starter, restart, SO_REUSEPORT overlap) under the same wrk
# load: writes bench/results/latest.md, bench/results/latest.png and README.md's table (about 11 minutes).
# Installs wrk, libserver-starter-perl and gnuplot-nox from Debian first if they are missing.
# BENCH_ARGS passes options, e.g. BENCH_ARGS="--reloads 3 --idle 5" for a quick look (written to out/bench/results;
# only a full run rewrites bench/results and the README).
bench: build
	bench/install-deps.sh
	$(DOTNET) bench/CompareBench/bin/$(CONFIG)/net10.0/CompareBench.dll --config $(CONFIG) $(BENCH_ARGS)

# Reload benchmark: drain vs stock Kestrel, keep-alive and new-connection load; prints a Markdown table.
bench-reload: build
	$(DOTNET) bench/ReloadBench/bin/$(CONFIG)/net10.0/ReloadBench.dll 10 $(CONFIG)

# 1000 reloads of a fast child: the supervisor's fd count, RSS and CPU, and idle CPU afterwards.
soak: build
	CONFIG=$(CONFIG) bench/reload-soak.sh 1000 30

clean:
	rm -rf out
	$(DOTNET) clean Supervisor.sln -c $(CONFIG) -nologo -v q
