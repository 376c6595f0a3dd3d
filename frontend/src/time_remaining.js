// Text for the server's estimate of the seconds a running task has left
// (seconds_remaining in the run and model version payloads).

// Return "about 3 min left" and the like, or "" when the server has no estimate yet.
export function timeRemainingText(secondsRemaining) {
  if (secondsRemaining === null || secondsRemaining === undefined) return "";
  if (secondsRemaining < 60) return "less than a minute left";
  const minutes = Math.round(secondsRemaining / 60);
  if (minutes < 60) return `about ${minutes} min left`;
  const hours = Math.floor(minutes / 60);
  const rest = minutes % 60;
  return rest ? `about ${hours} h ${rest} min left` : `about ${hours} h left`;
}
