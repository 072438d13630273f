// The duration strings of KeyRing specs ("720h", "36h30m"): the subset of Go's syntax the CRD's
// CEL rules admit, so anything the apiserver accepted parses here.
const durationPattern = /^(?:(\d{1,6})h)?(?:(\d{1,6})m)?(?:(\d{1,6})s)?$/;

/** Milliseconds in a duration string; throws for anything the CRD would refuse. */
export function parseDuration(text: string): number {
  const match = durationPattern.exec(text);
  if (!text || !match) throw new Error(`'${text}' is not a duration in hours, minutes and seconds, such as 720h`);
  const [hours = 0, minutes = 0, seconds = 0] = match.slice(1).map((part) => Number(part ?? 0));
  return ((hours * 60 + minutes) * 60 + seconds) * 1000;
}
