global using NUnit.Framework;
global using GSupervisor.Testing;
