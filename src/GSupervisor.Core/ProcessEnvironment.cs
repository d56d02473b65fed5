namespace GSupervisor.Core;

/// <summary>This process's environment as name/value pairs: the one walk of it that the supervisor and the client library use.</summary>
public static class ProcessEnvironment
{
    public static Dictionary<string, string> Read()
    {
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (System.Collections.DictionaryEntry entry in Environment.GetEnvironmentVariables())
            result[(string)entry.Key] = (string?)entry.Value ?? "";
        return result;
    }
}
