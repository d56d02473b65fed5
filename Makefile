# gsupervisor: build, test, install, demo. Needs only the .NET SDK (10.0) and make.

DOTNET  ?= dotnet
CONFIG  ?= Release
PREFIX  ?= /usr/local
PORT    ?= 8080
RID     ?= $(shell $(DOTNET) --info 2>/dev/null | awk '/^ *RID:/ {print $$2; exit}')

DAEMON_BIN := src/GSupervisor.Daemon/bin/$(CONFIG)/net10.0/gsupervisor
HELLO_DLL  := examples/HelloKestrel/bin/$(CONFIG)/net10.0/HelloKestrel.dll

.PHONY: all build test install demo bench-reload soak clean

all: build

build:
	$(DOTNET) build Supervisor.sln -c $(CONFIG) -nologo -clp:ErrorsOnly

# The whole suite: unit tests (fake clock) and integration tests (real binary, processes, sockets, signals).
test: build
	$(DOTNET) test Supervisor.sln -c $(CONFIG) --no-build -nologo --logger "console;verbosity=normal"

# A working $(PREFIX)/bin/gsupervisor that runs without the source tree (needs the .NET 10 runtime).
install:
	rm -rf out/install
	$(DOTNET) publish src/GSupervisor.Daemon -c $(CONFIG) -r $(RID) --self-contained false \
		-p:PublishReadyToRun=true -o out/install -nologo -clp:ErrorsOnly
	mkdir -p $(PREFIX)/lib/gsupervisor $(PREFIX)/bin
	rm -rf $(PREFIX)/lib/gsupervisor/*
	cp -R out/install/. $(PREFIX)/lib/gsupervisor/
	ln -sf ../lib/gsupervisor/gsupervisor $(PREFIX)/bin/gsupervisor
	@echo "installed $(PREFIX)/bin/gsupervisor"

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

# Reload benchmark: drain vs stock Kestrel, keep-alive and new-connection load; prints a Markdown table.
bench-reload: build
	$(DOTNET) bench/ReloadBench/bin/$(CONFIG)/net10.0/ReloadBench.dll 10 $(CONFIG)

# 1000 reloads of a fast child: the supervisor's fd count, RSS and CPU, and idle CPU afterwards.
soak: build
	CONFIG=$(CONFIG) bench/reload-soak.sh 1000 30

clean:
	rm -rf out
	$(DOTNET) clean Supervisor.sln -c $(CONFIG) -nologo -v q
