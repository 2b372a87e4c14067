/**
 * Called as a long operation advances (`step` names what is counted): the commands draw
 * a progress indicator on a terminal. Lower layers never print.
 */
export type ProgressFn = (step: string, done: number, total: number) => void;
