using System.Globalization;

namespace GSupervisor.Core;

/// <summary>Parses and prints durations written as on the command line: <c>500ms</c>, <c>2s</c>, <c>1m30s</c>, <c>1h</c>.</summary>
public static class Duration
{
    /// <summary>Parses <paramref name="text"/>; on failure <paramref name="error"/> says why in one line.</summary>
    public static bool TryParse(string? text, out TimeSpan value, out string error)
    {
        value = TimeSpan.Zero;
        error = "";
        if (string.IsNullOrWhiteSpace(text))
        {
            error = "duration is empty; write it with a unit, e.g. 500ms, 2s or 1m";
            return false;
        }
        var s = text.Trim();
        var total = 0.0;
        var i = 0;
        while (i < s.Length)
        {
            var start = i;
            while (i < s.Length && (char.IsAsciiDigit(s[i]) || s[i] == '.')) i++;
            if (start == i)
            {
                error = $"duration '{text}' is not a number with a unit; write e.g. 500ms, 2s or 1m";
                return false;
            }
            if (!double.TryParse(s.AsSpan(start, i - start), NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var number))
            {
                error = $"duration '{text}' has a malformed number; write e.g. 500ms, 2s or 1m";
                return false;
            }
            var unitStart = i;
            while (i < s.Length && char.IsAsciiLetter(s[i])) i++;
            var unit = s[unitStart..i];
            double scale = unit switch
            {
                "ms" => 1,
                "s" => 1000,
                "m" => 60_000,
                "h" => 3_600_000,
                _ => -1,
            };
            if (unit.Length == 0)
            {
                error = $"duration '{text}' needs a unit; write e.g. {number.ToString(CultureInfo.InvariantCulture)}s or {number.ToString(CultureInfo.InvariantCulture)}ms";
                return false;
            }
            if (scale < 0)
            {
                error = $"duration '{text}' has unknown unit '{unit}'; use ms, s, m or h";
                return false;
            }
            total += number * scale;
        }
        if (total > TimeSpan.FromDays(1).TotalMilliseconds)
        {
            error = $"duration '{text}' is longer than a day";
            return false;
        }
        value = TimeSpan.FromMilliseconds(total);
        return true;
    }

    /// <summary>Short human form: <c>250ms</c>, <c>1.5s</c>, <c>2m</c>, <c>1m30s</c>.</summary>
    public static string Format(TimeSpan value)
    {
        if (value < TimeSpan.FromSeconds(1)) return $"{(long)Math.Round(value.TotalMilliseconds)}ms";
        if (value < TimeSpan.FromMinutes(1))
        {
            var seconds = Math.Round(value.TotalSeconds, 1);
            return seconds.ToString(seconds % 1 == 0 ? "0" : "0.0", CultureInfo.InvariantCulture) + "s";
        }
        var minutes = (long)value.TotalMinutes;
        var rest = (long)Math.Round(value.TotalSeconds - minutes * 60);
        return rest == 0 ? $"{minutes}m" : $"{minutes}m{rest}s";
    }
}
